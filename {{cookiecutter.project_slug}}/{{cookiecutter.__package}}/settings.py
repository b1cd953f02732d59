"""Every runtime setting in one validated place, read from the environment and `.env`.

Field names follow Celery's own lowercase setting names; the environment variable is the same name upper-cased with a
`CELERY_` prefix (`task_time_limit` <- `CELERY_TASK_TIME_LIMIT`). Connection URLs shared by several parts keep their
conventional names (`REDIS_URL`). `.env.example` documents every variable.
"""

import re
import zoneinfo
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The value `.env.example` ships for secrets; the post-generation hook replaced it in your `.env`.
PLACEHOLDER_SECRET = "change-me"
QUEUE_NAME = re.compile(r"[a-z0-9_-]+")
# kombu's Redis transport blocks in BRPOP this long per call (Transport.brpop_timeout; not changed here).
REDIS_BRPOP_TIMEOUT = 1.0


def _unprefixed(name: str) -> FieldInfo:
    """A field read from a conventional variable name (REDIS_URL), not the CELERY_ prefixed one."""
    return Field(default=None, validation_alias=AliasChoices(name))


class Settings(BaseSettings):
    # .run/dev.env exists only while `make dev` runs; it holds the URLs of the servers that started.
    model_config = SettingsConfigDict(env_prefix="CELERY_", env_file=(".env", ".run/dev.env"), extra="ignore")

    # development allows placeholder secrets and local defaults; anything else refuses them.
    environment: Literal["development", "staging", "production"] = Field(
        default="development", validation_alias=AliasChoices("ENVIRONMENT")
    )
    # Results, idempotency keys and dead letters live here{% if cookiecutter.broker == "redis" %} (and it is the broker){% endif %}.
    redis_url: str | None = _unprefixed("REDIS_URL")
    # Only used by `make dev` to protect the Redis it starts; production URLs carry their own credentials.
    redis_password: str | None = _unprefixed("REDIS_PASSWORD")
{%- if cookiecutter.broker == "rabbitmq" %}
    # Only used by `make dev` for the RabbitMQ node it starts.
    rabbitmq_password: str | None = _unprefixed("RABBITMQ_PASSWORD")
    # amqp://user:password@host:5672/vhost; required: RabbitMQ is the broker.
    broker_url: str | None = None
{%- else %}
    # Defaults to REDIS_URL; set it to put the broker on a separate Redis from results.
    broker_url: str | None = None
    # None: the URL's scheme decides; redis:// gets redis_transport.py's fix. A class path selects another transport.
    broker_transport: str | None = None
{%- endif %}
    # Defaults to REDIS_URL.
    result_backend: str | None = None

    # The first queue is the default: tasks without a route go there.
    queues: Annotated[list[str], NoDecode] = {{ cookiecutter.__queues.split(',') | tojson }}
    timezone: str = "{{ cookiecutter.timezone }}"

    # Soft limit raises SoftTimeLimitExceeded inside the task so it can clean up; the hard limit kills the process.
    task_soft_time_limit: int = 240
    task_time_limit: int = 300
    # The longest countdown/ETA any code in this project schedules; the Redis visibility timeout is sized from it.
    max_countdown: int = 3600
    # None: computed by the rule in `_size_visibility_timeout`. Only the Redis broker uses it.
    visibility_timeout: int | None = None
    # One day: long enough for callers to read a result, short enough that Redis does not fill up.
    result_expires: int = 86_400
    # Redis connection bounds for the broker (redis broker) and the result backend; kombu's and redis-py's default is
    # to wait forever. The rule (`_check_redis_timeouts`): one connection attempt (TCP connect, then the first reply)
    # is shorter than the worker's heartbeat stale limit (30 s), or a blackholed Redis holds the worker's reconnection
    # loop inside one attempt until the liveness probe restarts it. A DNS lookup is bounded by the resolver
    # (resolv.conf timeout/attempts), not by these.
    redis_socket_connect_timeout: float = 5.0
    # Any one reply. Above kombu's BRPOP timeout (1 s, the server answers within it even with no message), so an idle
    # consumer never times out; 10 s leaves room for a slow command on a loaded Redis.
    redis_socket_timeout: float = 10.0
    # Largest task message accepted, in bytes (guards.py): a bigger one is refused at publish time and dead-lettered by
    # the worker. Pass large data by reference (an id, a URL): big messages slow the broker and every worker prefetch.
    max_payload_bytes: int = 1_048_576
    # Replace a pool process that has grown past this much resident memory (KiB): the leak guard.
    worker_max_memory_per_child: int = 512_000
    # Off (None): replacing a pool process after N tasks stalls a one-process worker for up to 5 s each time (Celery
    # 5.7 refills the pool on a 5 s timer, celery/celery#9588; `make bench`: 272 instead of 696 tasks/s). Set it only
    # for tasks that leak something memory does not show (file handles, connections).
    worker_max_tasks_per_child: int | None = None
    # On a cold shutdown (SIGQUIT; a second SIGTERM only repeats the warm one) running tasks get this long to finish
    # before they are cancelled and, with acks_late, put back in the queue.
    worker_soft_shutdown_timeout: float = 30.0
    # None: each worker uses the value its queue's profile sets in queues.py.
    worker_prefetch_multiplier: int | None = None
    # False: no task events until Flower asks for them (celeryconfig.py says what they cost).
    worker_send_task_events: bool = False
    # How long a finished idempotency key is kept: a redelivery or retry of the same key inside this window is skipped.
    idempotency_ttl: int = 7 * 86_400
    # json: one JSON object per line, for log pipelines; text: readable in a terminal (logs.py).
    log_format: Literal["json", "text"] = Field(default="json", validation_alias=AliasChoices("LOG_FORMAT"))
    # Prefix for every Redis key this project writes, so several projects can share one Redis.
    key_prefix: str = "{{ cookiecutter.__package }}"

    # Beat (RedBeat). Defaults to REDIS_URL, set explicitly: RedBeat's fallback to broker_url is deprecated.
    redbeat_redis_url: str | None = None
    # The longest beat sleeps between checks of the schedule: a bound on how late an entry can fire, and on how
    # stale the lock's TTL gets. Small values cost one Redis round trip per interval.
    beat_max_loop_interval: float = 5.0
    # How long the beat lock outlives its last renewal. A standby beat takes over at most this long (plus one loop
    # interval) after the active beat dies. The rule: at least 5x beat_max_loop_interval, so a slow tick or a short
    # Redis hiccup does not let a second beat in.
    redbeat_lock_timeout: int = 25
    # How often the example price refresh runs (schedule.py).
    price_refresh_seconds: int = 60

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        return [name.strip() for name in value.split(",")] if isinstance(value, str) else value

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, names: list[str]) -> list[str]:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"CELERY_QUEUES {names} must be a non-empty list of unique names")
        for name in names:
            if not QUEUE_NAME.fullmatch(name):
                raise ValueError(f"queue name {name!r} must match [a-z0-9_-]+")
        return names

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, name: str) -> str:
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"CELERY_TIMEZONE {name!r} is not an IANA time zone name (e.g. 'UTC')") from None
        return name

    @model_validator(mode="after")
    def _fill_urls(self) -> "Settings":
        if not self.redis_url:
            raise ValueError("REDIS_URL is not set: point it at your Redis (`make dev` starts a local one and sets it)")
{%- if cookiecutter.broker == "rabbitmq" %}
        if not self.broker_url:
            raise ValueError("CELERY_BROKER_URL is not set: point it at RabbitMQ (amqp://user:pass@host:5672/vhost)")
{%- else %}
        self.broker_url = self.broker_url or self.redis_url
{%- endif %}
        self.result_backend = self.result_backend or self.redis_url
        return self

    @model_validator(mode="after")
    def _check_limits(self) -> "Settings":
        if not 0 < self.task_soft_time_limit < self.task_time_limit:
            raise ValueError(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({self.task_soft_time_limit}) must be above 0 and below "
                f"CELERY_TASK_TIME_LIMIT ({self.task_time_limit}) so tasks get a chance to clean up"
            )
        return self

    @model_validator(mode="after")
    def _size_visibility_timeout(self) -> "Settings":
        # The rule: Redis hands an unacknowledged message to another worker after `visibility_timeout`. With acks_late
        # a message stays unacknowledged while it waits for its ETA *and* while it runs, so the timeout must exceed the
        # longest countdown plus the hard time limit, or the task runs twice. The 5-minute margin covers the time a
        # prefetched message waits in a busy worker's buffer. https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
        minimum = self.max_countdown + self.task_time_limit
        if self.visibility_timeout is None:
            self.visibility_timeout = minimum + 300
        elif self.visibility_timeout <= minimum and self.environment != "development":
            raise ValueError(
                f"CELERY_VISIBILITY_TIMEOUT ({self.visibility_timeout}) must exceed CELERY_MAX_COUNTDOWN + "
                f"CELERY_TASK_TIME_LIMIT ({minimum}), or Redis redelivers tasks that are still waiting or running"
            )
        return self

    @model_validator(mode="after")
    def _check_redis_timeouts(self) -> "Settings":
        from .heartbeat import heartbeat_stale_after  # stdlib only; reads WORKER_HEARTBEAT_STALE_AFTER

        if self.redis_socket_connect_timeout <= 0 or self.redis_socket_timeout <= REDIS_BRPOP_TIMEOUT:
            raise ValueError(
                f"CELERY_REDIS_SOCKET_CONNECT_TIMEOUT ({self.redis_socket_connect_timeout}) must be above 0 and "
                f"CELERY_REDIS_SOCKET_TIMEOUT ({self.redis_socket_timeout}) above kombu's BRPOP timeout "
                f"({REDIS_BRPOP_TIMEOUT} s), or an idle consumer times out"
            )
        attempt, stale = self.redis_socket_connect_timeout + self.redis_socket_timeout, heartbeat_stale_after()
        if attempt >= stale:
            raise ValueError(
                f"CELERY_REDIS_SOCKET_CONNECT_TIMEOUT + CELERY_REDIS_SOCKET_TIMEOUT ({attempt:g} s, one connection "
                f"attempt) must be below WORKER_HEARTBEAT_STALE_AFTER ({stale:g} s), or the liveness probe restarts "
                "a worker waiting for an unresponsive broker"
            )
        return self

    @model_validator(mode="after")
    def _check_beat(self) -> "Settings":
        self.redbeat_redis_url = self.redbeat_redis_url or self.redis_url
        if self.redbeat_lock_timeout < 5 * self.beat_max_loop_interval:
            raise ValueError(
                f"CELERY_REDBEAT_LOCK_TIMEOUT ({self.redbeat_lock_timeout}) must be at least 5x "
                f"CELERY_BEAT_MAX_LOOP_INTERVAL ({self.beat_max_loop_interval}), or a slow tick lets a second beat in"
            )
        return self

    @property
    def redbeat_key_prefix(self) -> str:
        return f"{self.key_prefix}:redbeat:"

    @property
    def redbeat_lock_key(self) -> str:
        # RedBeat's own default layout: "<prefix>:lock".
        return f"{self.redbeat_key_prefix}:lock"

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> "Settings":
        if self.environment == "development":
            return self
        for name in ("redis_url", "broker_url", "result_backend", "redbeat_redis_url", "redis_password"):
            if PLACEHOLDER_SECRET in (getattr(self, name) or ""):
                raise ValueError(f"{name} still holds the placeholder secret {PLACEHOLDER_SECRET!r}; set a real one")
        return self


settings = Settings()
