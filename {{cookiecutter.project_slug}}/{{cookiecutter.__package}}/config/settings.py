"""Every runtime setting in one validated place, read from the environment and `.env`.

Field names follow Celery's own lowercase setting names; the environment variable is the same name upper-cased with a
`CELERY_` prefix (`task_time_limit` <- `CELERY_TASK_TIME_LIMIT`). Connection URLs shared by several parts keep their
conventional names (`REDIS_URL`). `.env.example` documents every variable.
"""

import math
import re
import ssl
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# stdlib only; reads WORKER_HEARTBEAT_STALE_AFTER, which the probes read without these settings.
from ..runtime.heartbeat import heartbeat_stale_after

# The value `.env.example` ships for secrets; the post-generation hook replaced it in your `.env`.
PLACEHOLDER_SECRET = "change-me"
QUEUE_NAME = re.compile(r"[a-z0-9_-]+")
# URL schemes that connect over TLS: their TLS options come from settings (redis_ssl, broker_use_ssl), never the URL.
TLS_SCHEMES = {"rediss", "amqps"}
KEY_PREFIX = re.compile(r"[A-Za-z0-9_.-]+")
{%- if cookiecutter.broker == "redis" %}
# A queue's list is "<CELERY_KEY_PREFIX>:<queue>", next to kombu's keys (unacked...) and this project's
# (redis_store.key, RedBeat): a queue with one of these names would share a key that holds something else.
KOMBU_KEY_NAMES = ("unacked", "unacked_index", "unacked_mutex")
RESERVED_QUEUE_NAMES = (*KOMBU_KEY_NAMES, "deadletters", "idempotency", "metrics", "outbox", "diagnostics", "redbeat")
{%- endif %}
# kombu's Redis transport blocks in BRPOP this long per call (Transport.brpop_timeout; not changed here).
REDIS_BRPOP_TIMEOUT = 1.0
{%- if cookiecutter.broker == "rabbitmq" %}
# RabbitMQ's own poison-message bound: the quorum queues' x-delivery-limit (queues.py).
DELIVERY_LIMIT = 10
{%- endif %}


def _unprefixed(name: str, default: str | None = None) -> Any:
    """A field read from a conventional variable name (REDIS_URL), not the CELERY_ prefixed one."""
    # Any: Field() is typed as its default's type, which differs per field; the class annotation gives the type.
    return Field(default=default, validation_alias=AliasChoices(name))


class Settings(BaseSettings):
    # .run/dev.env exists only while `make dev` runs; it holds the URLs of the servers that started.
    # hide_input_in_errors: a refused value (a URL with its password) is never copied into the error or a log.
    model_config = SettingsConfigDict(
        env_prefix="CELERY_", env_file=(".env", ".run/dev.env"), extra="ignore", hide_input_in_errors=True
    )

    # development allows placeholder secrets and local defaults; anything else refuses them.
    environment: Literal["development", "staging", "production"] = Field(
        default="development", validation_alias=AliasChoices("ENVIRONMENT")
    )
    # Results, idempotency keys and dead letters live here{% if cookiecutter.broker == "redis" %} (and it is the broker){% endif %}.
    # "" until set ("" or unset is refused below), so code reading it after validation gets a str, never None.
    redis_url: str = _unprefixed("REDIS_URL", default="")
    # Only used by `make dev` to protect the Redis it starts; production URLs carry their own credentials.
    redis_password: str | None = _unprefixed("REDIS_PASSWORD")
{%- if cookiecutter.broker == "rabbitmq" %}
    # Only used by `make dev` for the RabbitMQ node it starts.
    rabbitmq_password: str | None = _unprefixed("RABBITMQ_PASSWORD")
    # amqp://user:password@host:5672/vhost; required: RabbitMQ is the broker.
    broker_url: str = ""
{%- else %}
    # Defaults to REDIS_URL; set it to put the broker on a separate Redis from results.
    broker_url: str = ""
    # None: the URL's scheme decides; redis:// gets redis_transport.py's fix. A class path selects another transport.
    broker_transport: str | None = None
{%- endif %}
    # Defaults to REDIS_URL.
    result_backend: str = ""
    # TLS: rediss:// and amqps:// URLs connect over TLS, and every client (broker, results, RedBeat, this project's
    # own Redis client, the exporter, health checks, Flower) verifies the server's certificate chain AND that it names
    # the URL's host. PEM file of the CA(s) that signed the servers' certificates; None: the system's CA store.
    ssl_ca_certs: str | None = None
    # The only way to connect to a TLS server without verifying it (a self-signed test server): anyone on the network
    # path can then read and change every task. Settings refuse any ssl* parameter on a TLS URL unless this is true.
    ssl_insecure_skip_verify: bool = False

    # The first queue is the default: tasks without a route go there.
    queues: Annotated[list[str], NoDecode] = [
{%- for queue in cookiecutter.__queues.split(',') %}
        "{{ queue }}",
{%- endfor %}
        # New queues go below this line (README.md, "Add a queue").
    ]
    timezone: str = "{{ cookiecutter.timezone }}"
    # Extra task modules the worker imports beside the tasks package, comma-separated (e.g. devtools.diagnostics, the
    # fault-drill tasks, which are not in the wheel). Empty in production: a worker runs only what the package holds.
    extra_task_modules: Annotated[list[str], NoDecode] = []

    # Soft limit raises SoftTimeLimitExceeded inside the task so it can clean up; the hard limit kills the process.
    task_soft_time_limit: int = 240
    task_time_limit: int = 300
    # The longest countdown/ETA a task may be sent with: a longer one is refused when it is sent or retried
    # (tasks/base.py), because the broker limits below are sized from it. Schedule further ahead with beat.
    max_countdown: int = 3600
    # The largest prefetch multiplier any worker uses (queues.py profiles, CELERY_WORKER_PREFETCH_MULTIPLIER may not
    # exceed it): a prefetched message waits up to this many task runs in a worker's buffer, unacknowledged.
    max_prefetch_multiplier: int = 4
    # How many countdown/ETA tasks one worker holds in memory at most; past it the worker fetches nothing more until
    # some come due (Celery's worker_eta_task_limit caps the prefetch count it raises for each held ETA task).
{%- if cookiecutter.broker == "redis" %}
    # Redis hands a countdown task to a worker at once and the visibility timeout runs from then on; past this limit
    # the rest wait in the queue, where no clock runs against them, and a worker's memory stays bounded.
{%- else %}
    # Native delayed delivery keeps waiting tasks in RabbitMQ, so a worker holds only the few that are due; the limit
    # bounds memory if a message bypasses it (published to another exchange with an ETA header).
{%- endif %}
    # Kept small: ETA tasks that fall due together queue in the worker unacknowledged, up to this many per worker, and
    # the broker timeouts below must cover the wait of the last one (Celery raises a worker's prefetch by one per ETA
    # task it holds, celery/worker/strategy.py, capped only by this). The cost: a worker holding this many takes no
    # other message until one comes due.
{%- if cookiecutter.broker == "redis" %}
    worker_eta_task_limit: int = 16
{%- else %}
    # 4: five runs of the 300 s hard limit stay within RabbitMQ's default 30 min consumer_timeout (rule below).
    worker_eta_task_limit: int = 4
{%- endif %}
    # The fewest pool processes any worker runs (bin/worker's WORKER_CONCURRENCY, default 1). Concurrency is set per
    # worker, not here, so the rule below assumes this lower bound: held tasks drain this many at a time.
    min_worker_concurrency: int = 1
{%- if cookiecutter.broker == "rabbitmq" %}
    # RabbitMQ's own `consumer_timeout` (rabbitmq.conf, 30 min by default), as set on your server: a delivery left
    # unacknowledged longer than this closes the worker's channel and the message is redelivered. See the rule below.
    consumer_timeout: int = 1800
{%- endif %}
    # None: computed by the rule in `_size_visibility_timeout`. Only the Redis broker uses it.
    visibility_timeout: int | None = None
    # Seconds the rule adds on top: clock differences between hosts, and the time a worker's restore sweep takes.
    visibility_margin: int = 60
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
    # How often this project's own Redis clients (idempotency keys, dead letters, task counters, circuit breakers, the
    # exporter) retry a command after a connection error or a timeout, with a backoff capped at 1 s: redis-py's
    # default, 10. Each try may wait the socket timeout, so a Redis that accepts connections and never answers holds a
    # caller up to (retries + 1) x CELERY_REDIS_SOCKET_TIMEOUT. bin/metrics sets 1: a scrape must answer in time.
    redis_retries: int = Field(default=10, ge=0)
    # Largest task message accepted, in bytes (tasks/base.py): a bigger one is refused at publish time and dead-lettered
    # by the worker. Pass large data by reference (an id, a URL): big messages slow the broker and every prefetch.
    max_payload_bytes: int = 1_048_576
    # Replace a pool process that has grown past this much resident memory (KiB): the leak guard.
    worker_max_memory_per_child: int = 512_000
    # Off (None): replacing a pool process after N tasks stalls a one-process worker for up to 5 s each time (Celery
    # 5.7 refills the pool on a 5 s timer, celery/celery#9588; cost measured in README "Performance"). Set it only
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
    # Prefix for every Redis key this project writes, so several projects can share one Redis database: its own keys,
    # RedBeat's, the result backend's{% if cookiecutter.broker == "redis" %} and the broker's (queues, unacked, bindings, broadcast channels){% endif %}. No ":" in it:
    # "<prefix>:" is then never the start of another project's prefix.
    key_prefix: str = "{{ cookiecutter.__package }}"

    # Beat (RedBeat). Defaults to REDIS_URL, set explicitly: RedBeat's fallback to broker_url is deprecated.
    redbeat_redis_url: str = ""
    # The longest beat sleeps between checks of the schedule: a bound on how late an entry can fire, and on how
    # stale the lock's TTL gets. Small values cost one Redis round trip per interval.
    beat_max_loop_interval: float = 5.0
    # How long the beat lock outlives its last renewal. A standby beat takes over at most this long (plus one loop
    # interval) after the active beat dies. The rule: at least 5x beat_max_loop_interval, so a slow tick or a short
    # Redis hiccup does not let a second beat in.
    redbeat_lock_timeout: int = 25
    # How often the example price refresh runs (schedule.py).
    price_refresh_seconds: int = 60
    # recipe: new settings go below this line (each reads CELERY_<NAME> from the environment or .env)

    # The external API of the example integration (tasks/rates.py, runtime/external.py). No default: an example URL
    # that resolves would send real traffic somewhere; unset, the task fails at once naming this variable.
    rates_api_url: str | None = None
    # Seconds to open a connection, and to wait for each read of the answer: a hung API lets the worker go after
    # this; one that trickles its answer is bounded by task_soft_time_limit (README, "Calling an external API").
    rates_api_connect_timeout: float = 3.0
    rates_api_read_timeout: float = 10.0
    # Retries of one call (timeouts, 5xx, 429, and while the circuit is open) before it is dead-lettered.
    rates_api_max_retries: int = 8
    # The circuit breaker (pybreaker, state in Redis, shared by every worker process and pod): this many retryable
    # failures in a row open it; after breaker_reset_timeout seconds trial calls are let through (half-open).
    breaker_fail_max: int = 5
    breaker_reset_timeout: int = 30

    # Error tracking (runtime/errors.py): unset, sentry-sdk is not initialised and nothing is sent. Sentry's own
    # variable names, so a DSN copied from its docs works. The DSN is the project's Client Key (Settings > Client Keys).
    sentry_dsn: str | None = _unprefixed("SENTRY_DSN")
    # Unset: ENVIRONMENT, so staging and production events are told apart without another variable.
    sentry_environment: str | None = _unprefixed("SENTRY_ENVIRONMENT")
    # The deployed version (an image tag, a git sha): Sentry groups regressions by it. Unset: the SDK's guess (git).
    sentry_release: str | None = _unprefixed("SENTRY_RELEASE")
    # Share of error events sent, 0 to 1: the cost knob (Sentry bills per event). 1.0: every final failure is seen.
    sentry_sample_rate: float = Field(default=1.0, ge=0, le=1, validation_alias=AliasChoices("SENTRY_SAMPLE_RATE"))

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        return [name.strip() for name in value.split(",")] if isinstance(value, str) else value

    @field_validator("extra_task_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        return [name.strip() for name in value.split(",") if name.strip()] if isinstance(value, str) else value

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
{%- if cookiecutter.broker == "redis" %}
            if name in RESERVED_QUEUE_NAMES:
                raise ValueError(f"queue name {name!r} is a Redis key name of this project or kombu; choose another")
{%- endif %}
        return names

    @field_validator("sentry_dsn", "sentry_environment", "sentry_release")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None  # `SENTRY_DSN=` in .env turns error tracking off, it is no DSN named ""

    @field_validator("sentry_dsn")
    @classmethod
    def _check_sentry_dsn(cls, dsn: str | None) -> str | None:
        if dsn:
            # Imported here: sentry-sdk takes ~0.3 s to import, and every process and probe reads these settings.
            from sentry_sdk.utils import BadDsn, Dsn

            try:  # the SDK's own parser: a bad DSN stops the process at start, not at its first error
                Dsn(dsn)
            except BadDsn as exc:
                raise ValueError(
                    f"SENTRY_DSN is not a Sentry DSN ({exc}): copy it from your Sentry project's Client Keys page, "
                    "e.g. https://<key>@o0.ingest.sentry.io/<project id>"
                ) from None
        return dsn

    @field_validator("ssl_ca_certs")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None  # `CELERY_SSL_CA_CERTS=` in .env means the system's CA store, not a file named ""

    @field_validator("key_prefix")
    @classmethod
    def _check_key_prefix(cls, prefix: str) -> str:
        if not KEY_PREFIX.fullmatch(prefix):
            raise ValueError(f"CELERY_KEY_PREFIX {prefix!r} must match [A-Za-z0-9_.-]+ (e.g. the package name)")
        return prefix

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
    def _check_prefetch(self) -> "Settings":
        prefetch = self.worker_prefetch_multiplier
        if prefetch is not None and prefetch > self.max_prefetch_multiplier:
            raise ValueError(
                f"CELERY_WORKER_PREFETCH_MULTIPLIER ({prefetch}) must not exceed CELERY_MAX_PREFETCH_MULTIPLIER "
                f"({self.max_prefetch_multiplier}): the broker timeouts are sized from it"
            )
        return self

    def longest_unacknowledged(self, countdown: int) -> int:
        """How long a worker may hold a delivery unacknowledged: the countdown it waits for, then the runs ahead of
        it in the worker's buffer, then its own run (hard time limit each).

        Assumption, the worst case: everything the worker holds falls due at once (ETA tasks due together, prefetched
        tasks) and each runs for the full hard limit, min_worker_concurrency at a time: the last one waits up to
        ceil(held / concurrency) runs (one more for a run already going when they fell due), then runs."""
        concurrency = self.min_worker_concurrency
        # Deliveries a worker holds unacknowledged are capped by its prefetch count, which starts at multiplier x
        # concurrency and which Celery raises per ETA task up to worker_eta_task_limit (kombu QoS max_prefetch).
        held = max(self.worker_eta_task_limit, self.max_prefetch_multiplier * concurrency)
        return countdown + (math.ceil(held / concurrency) + 1) * self.task_time_limit
{%- if cookiecutter.broker == "rabbitmq" %}

    @model_validator(mode="after")
    def _check_consumer_timeout(self) -> "Settings":
        # The rule: RabbitMQ closes the channel of a worker that holds a delivery unacknowledged for longer than
        # consumer_timeout, and redelivers the message (the task runs twice). Countdowns do not count against it:
        # with native delayed delivery (topic exchanges, queues.py) a waiting task stays in RabbitMQ's delay queues
        # and reaches a worker when it is due (up to 1 s early). So CELERY_MAX_COUNTDOWN may exceed consumer_timeout;
        # it is capped by what native delayed delivery can express (2**28 - 1 s), and the buffer wait plus the run
        # must stay under consumer_timeout. https://www.rabbitmq.com/docs/consumers#acknowledgement-timeout
        if self.max_countdown >= 2**28:
            raise ValueError(
                f"CELERY_MAX_COUNTDOWN ({self.max_countdown}) must be below 2**28 s, the longest delay RabbitMQ's "
                "native delayed delivery can hold; schedule further ahead with beat"
            )
        held = self.longest_unacknowledged(countdown=1)
        if held >= self.consumer_timeout and self.environment != "development":
            raise ValueError(
                f"CELERY_CONSUMER_TIMEOUT ({self.consumer_timeout}, RabbitMQ's consumer_timeout) must exceed {held}: "
                "(ceil(max(CELERY_WORKER_ETA_TASK_LIMIT, CELERY_MAX_PREFETCH_MULTIPLIER x MIN_WORKER_CONCURRENCY) / "
                "MIN_WORKER_CONCURRENCY) + 1) x CELERY_TASK_TIME_LIMIT; raise consumer_timeout in rabbitmq.conf, or "
                "lower the limits or the time limit"
            )
        return self
{%- endif %}

    @model_validator(mode="after")
    def _size_visibility_timeout(self) -> "Settings":
        # The rule: Redis hands an unacknowledged message to another worker after `visibility_timeout`. With acks_late
        # a message stays unacknowledged while it waits for its ETA, while it waits in the worker behind the other
        # tasks it holds (its prefetch and up to worker_eta_task_limit ETA tasks that fell due together), and while it
        # runs; the timeout must exceed all three (longest_unacknowledged), or the task runs twice.
        # CELERY_MAX_COUNTDOWN is enforced at publish time (tasks/base.py), so no countdown exceeds it. The margin
        # covers clock differences between hosts and kombu's restore interval. https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
        minimum = self.longest_unacknowledged(self.max_countdown) + self.visibility_margin
        if self.visibility_timeout is None:
            self.visibility_timeout = minimum
        elif self.visibility_timeout < minimum and self.environment != "development":
            raise ValueError(
                f"CELERY_VISIBILITY_TIMEOUT ({self.visibility_timeout}) must be at least {minimum}: "
                "CELERY_MAX_COUNTDOWN + (ceil(max(CELERY_WORKER_ETA_TASK_LIMIT, CELERY_MAX_PREFETCH_MULTIPLIER x "
                "MIN_WORKER_CONCURRENCY) / MIN_WORKER_CONCURRENCY) + 1) x CELERY_TASK_TIME_LIMIT + "
                "CELERY_VISIBILITY_MARGIN, or Redis redelivers tasks that are still waiting or running"
            )
        return self

    @model_validator(mode="after")
    def _check_redis_timeouts(self) -> "Settings":
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

    @model_validator(mode="after")
    def _check_tls(self) -> "Settings":
        if self.ssl_ca_certs:
            if not Path(self.ssl_ca_certs).is_file():
                raise ValueError(
                    f"CELERY_SSL_CA_CERTS {self.ssl_ca_certs!r} is not a file: point it at the CA file (PEM)"
                )
            try:  # the same loader every client uses: an empty, DER or cut-short file fails here, not at connect
                ssl.create_default_context(cafile=self.ssl_ca_certs)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"CELERY_SSL_CA_CERTS {self.ssl_ca_certs!r} holds no usable PEM certificate ({exc.reason or exc}): "
                    "give the CA file in PEM (-----BEGIN CERTIFICATE-----; `openssl x509 -inform der` converts DER)"
                ) from None
        if self.ssl_insecure_skip_verify:
            return self
        # An allowlist, not a list of bad values: on a TLS URL no ssl* parameter is accepted, whatever it says. The
        # libraries read them differently from each other (redis-py takes "no" as false and the first of a repeated
        # key; any ssl_* on a rediss:// broker makes kombu rebuild its options from the URL alone, dropping the CA
        # and the host name check; `ssl=true` on amqps:// replaces broker_use_ssl), so none can be trusted to add to
        # the verified options. Every str field is checked, so a URL setting added later is covered too.
        for name, value in self:
            # Each URL of a kombu failover list ("amqps://a;amqps://b") on its own.
            urls = [urlsplit(part) for part in value.split(";")] if isinstance(value, str) and "://" in value else []
            queries = [url.query for url in urls if url.scheme.lower() in TLS_SCHEMES]
            for key, _ in (pair for query in queries for pair in parse_qsl(query, keep_blank_values=True)):
                if key.lower().startswith("ssl"):
                    raise ValueError(
                        f"{_env_name(name)} has the URL parameter {key!r}: TLS options come from CELERY_SSL_CA_CERTS "
                        "(verification is always on); remove it, or set CELERY_SSL_INSECURE_SKIP_VERIFY=true"
                    )
        return self

    def redis_ssl(self, url: str | None) -> dict[str, Any] | None:
        """redis-py's TLS options for a rediss:// URL (None for redis://): for kombu, Celery, RedBeat and redis-py."""
        if urlsplit(url or "").scheme != "rediss":
            return None  # these options would switch a redis:// connection to TLS in kombu and Celery's backend
        if self.ssl_insecure_skip_verify:
            return {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}
        # Spelled out: kombu's own default for rediss:// is CERT_NONE, and Celery's backend refuses to guess.
        return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": self.ssl_ca_certs, "ssl_check_hostname": True}

    @property
    def broker_use_ssl(self) -> dict[str, Any] | None:
        """Celery's broker_use_ssl: redis-py's options for rediss://, py-amqp's for amqps://, None without TLS."""
        if urlsplit(self.broker_url or "").scheme != "amqps":
            return self.redis_ssl(self.broker_url)
        if self.ssl_insecure_skip_verify:
            return {"cert_reqs": ssl.CERT_NONE}
        # server_hostname None: kombu fills in the URL's host, which turns on SNI and the host name check (py-amqp
        # checks the host name only when it is given one; plain amqps:// verifies the chain alone).
        return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": self.ssl_ca_certs, "server_hostname": None}

    @property
    def global_keyprefix(self) -> str:
        """What kombu's Redis transport and Celery's Redis result backend put before every key and channel name."""
        return f"{self.key_prefix}:"

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


def _env_name(field: str) -> str:
    """The environment variable a field is read from (REDIS_URL, CELERY_BROKER_URL...)."""
    alias = Settings.model_fields[field].validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"CELERY_{field.upper()}"


settings = Settings()
