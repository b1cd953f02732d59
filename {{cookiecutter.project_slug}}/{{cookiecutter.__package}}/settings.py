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
{%- if cookiecutter.broker == "rabbitmq" %}
# RabbitMQ's own poison-message bound: the quorum queues' x-delivery-limit (queues.py).
DELIVERY_LIMIT = 10
{%- endif %}


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
    # False: no task events unless someone turns them on (`celery control enable_events`, or Flower started with
    # FLOWER_ENABLE_EVENTS=true); celeryconfig.py says what they cost.
    worker_send_task_events: bool = False
    # Poison messages: a task whose pool process dies mid-run (OOM kill, segfault) goes back to the queue
    # (task_reject_on_worker_lost); after this many such losses in a row it is dead-lettered instead, with the reason
    # "worker lost N times" (deadletters.py). 3: one or two losses can be a neighbour's memory spike or a node going
    # away; a third in a row is the task itself. Tasks cut off by a deploy are not counted (deadletters.py,
    # forgive_shutdown). It fails open: if REDIS_URL cannot be reached the task runs uncounted (RUNBOOK).
    # {% if cookiecutter.broker == "rabbitmq" %}Must stay below the queues' x-delivery-limit (queues.py), or
    # RabbitMQ dead-letters the message first, without the reason.{% else %}Without it, Redis would hand the message out again for ever.{% endif %}
    task_max_worker_lost: int = 3
    # Dead letters live in Redis{% if cookiecutter.broker == "redis" %}, the broker too (a Redis full of them stops all publishing){% endif %}.
    # Bounded by count and age; memory stays below about dead_letter_max_entries x (dead_letter_max_args_bytes + 2 KiB
    # of reason and traceback). The count: enough for a bad deploy's burst of failures; the oldest go first (logged).
    dead_letter_max_entries: int = 10_000
    # The age, in seconds: arguments can hold personal data (e-mail addresses); 14 days covers two weekly triage rounds.
    dead_letter_retention: int = 14 * 86_400
    # Arguments larger than this (bytes of JSON) are not stored, only a preview: a dead letter is for finding and
    # replaying a failure, not a second copy of big payloads. Such an entry cannot be replayed.
    dead_letter_max_args_bytes: int = 4096
    # Argument keys containing any of these (any depth, any case: access_token, X-Api-Key, client_secret, Order.email)
    # are stored as "[redacted]", and so is any string that looks like an e-mail address: credentials and personal
    # data never sit in Redis for the retention period. Such an entry cannot be replayed (re-send it from its source).
    # Not redacted: the failure's reason and traceback (an error message may quote a value); they are cut to
    # 500 and 2,000 characters (deadletters.py). Remove "email" if your replays need the addresses and may keep them.
    dead_letter_redact_keys: Annotated[list[str], NoDecode] = [
        "password",
        "token",
        "secret",
        "key",
        "auth",
        "email",
        "card",
    ]
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

    @field_validator("dead_letter_redact_keys", mode="before")
    @classmethod
    def _split_redact_keys(cls, value: object) -> object:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value

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
    def _check_dead_letters(self) -> "Settings":
        for name in ("task_max_worker_lost", "dead_letter_max_entries", "dead_letter_retention"):
            if getattr(self, name) < 1:
                raise ValueError(f"CELERY_{name.upper()} ({getattr(self, name)}) must be at least 1")
{%- if cookiecutter.broker == "rabbitmq" %}
        if self.task_max_worker_lost >= DELIVERY_LIMIT:
            raise ValueError(
                f"CELERY_TASK_MAX_WORKER_LOST ({self.task_max_worker_lost}) must be below the queues' x-delivery-limit "
                f"({DELIVERY_LIMIT}), or RabbitMQ dead-letters a poison message before the project records why"
            )
{%- endif %}
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
