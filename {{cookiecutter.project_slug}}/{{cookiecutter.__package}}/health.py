"""Health checks for supervisors and container probes.

    python -m {{ cookiecutter.__package }}.health worker   # the worker's heartbeat file is fresh
    python -m {{ cookiecutter.__package }}.health beat     # a beat holds the lock, renewed lately
    python -m {{ cookiecutter.__package }}.health broker --wait 60   # the broker accepts connections

Exit 0 when healthy, 1 with a one-line reason otherwise. Deliberately cheap: no broker round trip, no Celery import.
"""

import argparse
import sys
import time

from .heartbeat import HEARTBEAT_STALE_AFTER, heartbeat_age, heartbeat_path

# A beat renews its lock at every tick, at most beat_max_loop_interval apart; this many missed renewals is unhealthy.
BEAT_MISSED_TICKS = 3


def check_worker(max_age: float) -> str | None:
    age = heartbeat_age()
    if age is None:
        return f"no heartbeat file at {heartbeat_path()} (worker not started, or stopped)"
    if age > max_age:
        return f"heartbeat {age:.0f}s old at {heartbeat_path()} (limit {max_age:.0f}s): worker main loop is stuck"
    return None


def check_beat() -> str | None:
    """The lock's remaining TTL tells when it was last renewed: renewals reset it to redbeat_lock_timeout."""
    import redis

    from .settings import settings

    tls = settings.redis_ssl(settings.redbeat_redis_url) or {}
    client = redis.Redis.from_url(settings.redbeat_redis_url, socket_timeout=3, **tls)
    try:
        ttl = client.pttl(settings.redbeat_lock_key) / 1000
    except redis.RedisError as exc:
        return f"cannot read the beat lock from Redis: {exc}"
    if ttl < 0:
        return f"no beat holds the lock {settings.redbeat_lock_key} (beat not started, or dead for a while)"
    since_renewal = settings.redbeat_lock_timeout - ttl
    limit = BEAT_MISSED_TICKS * settings.beat_max_loop_interval
    if since_renewal > limit:
        return f"beat lock last renewed {since_renewal:.0f}s ago (limit {limit:.0f}s): beat is stuck or dying"
    return None


def check_broker(wait: float) -> str | None:
    """Connect to the broker, retrying for up to `wait` seconds (start scripts use it to wait for the broker)."""
    from kombu import Connection

    from .settings import settings

    deadline = time.monotonic() + wait
    while True:
        try:
            # ssl: the same verified TLS options as the workers' (False for a plain URL).
            with Connection(settings.broker_url, ssl=settings.broker_use_ssl or False, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1)
            return None
        except Exception as exc:
            if time.monotonic() >= deadline:
                return f"broker unreachable after {wait:.0f}s: {exc}{_tls_hint(exc)}"
            time.sleep(1)


def _tls_hint(exc: Exception) -> str:
    if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
        return ""
    return (
        " (the server's certificate must be signed by a CA in CELERY_SSL_CA_CERTS, or the system's when unset, "
        "and name the host in the URL)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.__package }}.health")
    parser.add_argument("process", choices=["worker", "beat", "broker"])
    parser.add_argument(
        "--max-age", type=float, default=HEARTBEAT_STALE_AFTER, help="worker: seconds (default %(default)s)"
    )
    parser.add_argument("--wait", type=float, default=0, help="broker: keep trying this many seconds")
    args = parser.parse_args(argv)
    checks = {
        "worker": lambda: check_worker(args.max_age),
        "beat": check_beat,
        "broker": lambda: check_broker(args.wait),
    }
    problem = checks[args.process]()
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
