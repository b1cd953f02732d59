"""Health checks for supervisors and container probes.

    python -m {{ cookiecutter.__package }}.health worker   # the worker's heartbeat file is fresh
    python -m {{ cookiecutter.__package }}.health worker --ready   # ...and connected to its broker
    python -m {{ cookiecutter.__package }}.health beat     # a beat holds the lock, renewed lately
    python -m {{ cookiecutter.__package }}.health broker --wait 60   # the broker accepts connections

Exit 0 when healthy, 1 with a one-line reason otherwise. Deliberately cheap: no broker round trip, no Celery import.
"""

import sys
import time
from collections.abc import Callable

from .runtime.heartbeat import WAITING_FOR_BROKER, heartbeat_file, heartbeat_stale_after, read_heartbeat

# A beat renews its lock at every tick, at most beat_max_loop_interval apart; this many missed renewals is unhealthy.
BEAT_MISSED_TICKS = 3


def check_worker(max_age: float | None, ready: bool = False) -> str | None:
    """Healthy while the main process touches its heartbeat: from its event loop, or from the broker reconnection
    loop during a broker outage (a worker waiting for its broker resumes by itself once it is back: restarting it
    would only kill the tasks its pool is finishing). Stale means the main thread is stuck, broker or not.

    ready (`--ready`, the readiness and startup probes): also connected to the broker now. The state is
    waiting-for-broker from start until the first connection and during every reconnection, so a worker that can
    never connect (a wrong password, host or CA) is live but never ready, and a rollout of it stalls."""
    try:
        limit = heartbeat_stale_after() if max_age is None else max_age
    except ValueError as exc:
        return str(exc)
    beat = read_heartbeat()
    if beat is None:
        return f"no heartbeat file at {heartbeat_file()} (worker not started, or stopped)"
    age, state = beat
    if age > limit:
        where = f"{heartbeat_file()} (limit {limit:.0f}s, last {state})"
        return f"heartbeat {age:.0f}s old at {where}: worker main loop is stuck"
    if state == WAITING_FOR_BROKER:
        if ready:
            return f"not connected to the broker (waiting-for-broker at {heartbeat_file()}): see the worker's log"
        print("waiting for the broker (reconnecting; live)", file=sys.stderr)
    return None


def check_beat() -> str | None:
    """The lock's remaining TTL tells when it was last renewed: renewals reset it to redbeat_lock_timeout."""
    import redis

    from .config.settings import settings

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

    from .config.settings import settings

    deadline = time.monotonic() + wait
    while True:
        try:
            # ssl: the same verified TLS options as the workers' (False for a plain URL).
{%- if cookiecutter.broker == "redis" %}
            # The socket timeouts bound one attempt on an unresponsive Redis: kombu's Redis transport ignores
            # connect_timeout, and would wait forever.
            bounds = {"socket_connect_timeout": 3, "socket_timeout": 3}
{%- else %}
            bounds: dict[str, float] = {}  # py-amqp bounds the attempt with connect_timeout
{%- endif %}
            with Connection(
                settings.broker_url, ssl=settings.broker_use_ssl or False, connect_timeout=3, transport_options=bounds
            ) as connection:
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


def report(problem: str | None) -> int:
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["worker"], ["worker", "--ready"]):
        # The probes, run on every worker every few seconds: no argparse import (a large part of their CPU).
        return report(check_worker(None, ready=len(argv) == 2))
    import argparse

    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.__package }}.health")
    parser.add_argument("process", choices=["worker", "beat", "broker"])
    parser.add_argument("--max-age", type=float, help="worker: seconds (default WORKER_HEARTBEAT_STALE_AFTER, else 30)")
    parser.add_argument("--ready", action="store_true", help="worker: also connected to the broker now")
    parser.add_argument("--wait", type=float, default=0, help="broker: keep trying this many seconds")
    args = parser.parse_args(argv)
    checks: dict[str, Callable[[], str | None]] = {
        "worker": lambda: check_worker(args.max_age, args.ready),
        "beat": check_beat,
        "broker": lambda: check_broker(args.wait),
    }
    return report(checks[args.process]())


if __name__ == "__main__":
    sys.exit(main())
