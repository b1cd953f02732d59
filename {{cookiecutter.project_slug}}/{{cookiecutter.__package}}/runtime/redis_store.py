"""The project's own Redis keys (idempotency, dead letters, outbox), apart from what Celery stores there itself."""

from functools import cache

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ..config.settings import settings


@cache
def client() -> redis.Redis:
    # One pooled client per process; decode_responses so callers get str, not bytes. TLS options as every other
    # client's (settings.redis_ssl: verification on for rediss://).
    tls = settings.redis_ssl(settings.redis_url) or {}
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,
        # Bounded waits: redis-py waits forever by default, so a hung Redis would stall every task that touches it
        # (each redelivered one, through the poison-message counter). No blocking commands use this client.
        socket_connect_timeout=settings.redis_socket_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retry=retry(),
        **tls,
    )


def retry() -> Retry:
    """redis-py's retry on connection errors and timeouts (its default backoff), CELERY_REDIS_RETRIES times."""
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=1), settings.redis_retries)


def key(*parts: str) -> str:
    """A namespaced key, e.g. key("idempotency", "send_receipt", "42") -> "<prefix>:idempotency:send_receipt:42"."""
    return ":".join((settings.key_prefix, *parts))
