"""Calling an external HTTP API safely: bounded timeouts, which failures are worth a retry, and a circuit breaker
whose state lives in Redis, so every worker process and pod opens and closes it together.

The breaker is pybreaker's (a well-kept implementation of the pattern, with a Redis storage): after
CELERY_BREAKER_FAIL_MAX retryable failures in a row it opens, calls fail at once with CircuitBreakerError instead of
reaching the API, and after CELERY_BREAKER_RESET_TIMEOUT seconds the next call is a trial (half-open): success closes
it, failure opens it again. Every failure counts (timeouts, connection errors, 5xx, 429, an unreadable answer, a soft
time limit cutting the call) except a 4xx other than 429: that is the caller's mistake and says nothing about the
API's health.

Keys: "<prefix>:breaker:<name>:pybreaker:<field>" (pybreaker's own layout under a namespace), plus
"<prefix>:breaker:<name>:transitions", a hash of transition counts the exporter reads (metrics.py).
"""

import email.utils
import logging
import random
import time
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

import httpx
import pybreaker
import redis

from ..config.settings import settings
from . import redis_store

logger = logging.getLogger(__name__)

STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)


class Unavailable(Exception):
    """A failure worth retrying later: a timeout, a connection error, a 5xx, or a 429."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        # Seconds the API asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after


def namespace(name: str) -> str:
    return f"{settings.key_prefix}:breaker:{name}"


@cache
def _redis() -> redis.Redis:
    # Its own client: pybreaker's storage decodes bytes itself, and redis_store.client() returns str.
    tls = settings.redis_ssl(settings.redis_url) or {}
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_socket_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retry=redis_store.retry(),
        **tls,
    )


class _CountTransitions(pybreaker.CircuitBreakerListener):
    """Counts each state change in Redis for the exporter, and logs it. Every process that notices a change (it reads
    the shared state) reports it: the count is of observations, the exporter's state gauge is the truth."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", "none")
        logger.warning("circuit %s: %s -> %s", cb.name, old, new_state.name)
        try:
            _redis().hincrby(f"{namespace(str(cb.name))}:transitions", f"{old}->{new_state.name}", 1)
        except redis.RedisError as exc:  # a metric is not worth failing the call for
            logger.warning("breaker transition not counted: %s", exc)


@cache
def breaker(name: str) -> pybreaker.CircuitBreaker:
    """One breaker object per process and name; the state it reads and writes is shared through Redis."""
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, _redis(), namespace=namespace(name))
    # The exporter lists circuits from this set (one SMEMBERS per scrape, not a SCAN of the whole keyspace).
    _redis().sadd(f"{settings.key_prefix}:breaker:names", name)
    return pybreaker.CircuitBreaker(
        fail_max=settings.breaker_fail_max,
        reset_timeout=settings.breaker_reset_timeout,
        # A 4xx (other than 429, which get_json raises as Unavailable) is not a sign of a failing API.
        exclude=[httpx.HTTPStatusError],
        state_storage=storage,
        listeners=[_CountTransitions()],
        name=name,
        # The caller sees the Unavailable that tripped it (its message goes into the dead letter if retries run out).
        throw_new_error_on_trip=False,
    )


def seconds_until_trial(cb: pybreaker.CircuitBreaker) -> float:
    """How long an open circuit stays open: when to retry a call it refused."""
    opened_at = cb._state_storage.opened_at  # pybreaker's storage API (no public accessor)
    if opened_at is None:
        return float(settings.breaker_reset_timeout)
    return max(0.0, opened_at.timestamp() + settings.breaker_reset_timeout - datetime.now(UTC).timestamp())


def after_trial(cb: pybreaker.CircuitBreaker) -> float:
    """When to retry a call the open circuit refused: after the trial time, spread over one more reset window so the
    waiting tasks do not all come back in the same second. Capped by CELERY_MAX_COUNTDOWN (a longer countdown is
    refused, tasks/base.py)."""
    delay = seconds_until_trial(cb) + random.uniform(1.0, max(1.0, float(settings.breaker_reset_timeout)))
    return min(delay, float(settings.max_countdown))


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date (RFC 9110 10.2.3). None if unreadable."""
    if not value:
        return None
    if value.strip().isascii() and value.strip().isdigit():  # ASCII: "²".isdigit() is true, float() refuses it
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@cache
def client() -> httpx.Client:
    """One pooled client per process. connect/read bound how long one attempt can hold a worker."""
    timeout = httpx.Timeout(
        connect=settings.rates_api_connect_timeout,
        read=settings.rates_api_read_timeout,
        write=settings.rates_api_read_timeout,
        # Waiting for a free connection of the pool: same bound as connecting.
        pool=settings.rates_api_connect_timeout,
    )
    return httpx.Client(timeout=timeout)


def get_json(url: str) -> Any:
    """GET url; Unavailable for what a later attempt may fix, httpx.HTTPStatusError for other 4xx (not retried)."""
    try:
        response = client().get(url)
    except httpx.TimeoutException as exc:
        raise Unavailable(f"{type(exc).__name__} after the configured timeout: {url}") from exc
    except httpx.TransportError as exc:  # connection refused, reset, DNS
        raise Unavailable(f"{type(exc).__name__}: {exc}: {url}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise Unavailable(
            f"HTTP {response.status_code} from {url}", retry_after_seconds(response.headers.get("Retry-After"))
        )
    response.raise_for_status()
    return response.json()


def backoff(retries: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt: exponential (1, 2, 4 ... s) with full jitter, so many tasks failing together
    do not come back together; at least what Retry-After asked for. Capped by CELERY_MAX_COUNTDOWN."""
    delay = random.uniform(0, min(600.0, 2.0**retries))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(max(1.0, delay), float(settings.max_countdown))


def circuits() -> dict[str, tuple[str, dict[str, int]]]:
    """Every circuit this project's workers have used: name -> (state, {"closed->open": count, ...}). For the
    exporter: read straight from Redis, so it needs no breaker object of its own."""
    found: dict[str, tuple[str, dict[str, int]]] = {}
    # casts: this client returns bytes (no decode_responses); redis-py types every reply as bytes | str.
    for raw in sorted(cast("set[bytes]", _redis().smembers(f"{settings.key_prefix}:breaker:names"))):
        name = raw.decode()
        state = (cast("bytes | None", _redis().get(f"{namespace(name)}:pybreaker:state")) or b"closed").decode()
        changes = cast("dict[bytes, bytes]", _redis().hgetall(f"{namespace(name)}:transitions"))
        found[name] = (state, {k.decode(): int(v) for k, v in changes.items()})
    return found
