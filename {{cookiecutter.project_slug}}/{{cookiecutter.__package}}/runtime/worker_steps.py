"""Worker bootsteps: per-queue prefetch, and the heartbeat file that the health check reads (and the consumer that
keeps touching it while the worker reconnects to its broker)."""

import logging
from typing import Any

from celery import bootsteps
from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker.consumer import Consumer

from ..config.queues import prefetch_for
from ..config.settings import settings
from .heartbeat import RUNNING, WAITING_FOR_BROKER, heartbeat_interval, heartbeat_path, heartbeat_stale_after, touch

logger = logging.getLogger(__name__)

# The same reason bin/worker gives, for `celery worker -P solo` run directly.
SOLO_REFUSED = (
    "the solo pool is refused: a task on the main thread stops the heartbeat the liveness probe reads; "
    "use the prefork pool with concurrency 1 for one task at a time"
)


class QueuePrefetchStep(bootsteps.Step):
    """Apply the prefetch of the consumed queues' profile (queues.py) unless CELERY_WORKER_PREFETCH_MULTIPLIER is set.

    Bootstep constructors run after `-Q` is parsed and before the consumer reads `prefetch_multiplier`.
    """

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        if settings.worker_prefetch_multiplier is None:
            consumed = list(worker.app.amqp.queues.consume_from or settings.queues)
            worker.prefetch_multiplier = prefetch_for(consumed)


class HeartbeatStep(bootsteps.StartStopStep):
    # The timer runs inside the worker's main event loop, so a blocked main process stops touching the file.
    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # pool_cls is resolved to a class before bootsteps are built; refusing here stops the worker before it connects.
        pool = worker.pool_cls
        if isinstance(pool, type) and issubclass(pool, SoloPool):
            raise SystemExit(f"celery worker: {SOLO_REFUSED}")
        self.worker = worker
        self.path = heartbeat_path()
        # Read (and validated) here, so a bad WORKER_HEARTBEAT_* value stops the worker at start with its message.
        self.interval = heartbeat_interval()
        heartbeat_stale_after()
        self.tref = None

    def start(self, worker: Any) -> None:
        self.touch()
        self.tref = worker.timer.call_repeatedly(self.interval, self.touch)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        # A stopped worker is unhealthy at once, not 30 s later.
        self.path.unlink(missing_ok=True)

    def touch(self) -> None:
        # The consumer's state, not always "running": until the first connection the event loop's timer is not the
        # only one that may run (a threads-pool worker without an event loop), and readiness must not pass early.
        touch(self.path, getattr(getattr(self.worker, "consumer", None), "heartbeat_state", WAITING_FOR_BROKER))


class HeartbeatConsumer(Consumer):
    """Celery's consumer, touching the heartbeat while it waits for the broker (celeryconfig.worker_consumer).

    While the broker is down the event loop does not run: the main thread sits in kombu's connection retry loop, which
    sleeps up to 30 s between attempts in 1 s steps and calls a callback at each step. That loop is progress (it
    connects as soon as the broker answers), so each step touches the heartbeat, marked "waiting-for-broker". A main
    thread stuck anywhere else still lets the file go stale. One connection attempt must stay well under the stale
    limit for this to hold: the socket timeouts in celeryconfig.py bound it.

    heartbeat_state is "waiting-for-broker" until the first connection and during each reconnection, "running" once
    connected: `health worker --ready` (the readiness and startup probes) reads it from the file.

    Relies on Consumer.ensure_connected calling conn.ensure_connection(..., callback=...): Celery and kombu are pinned
    to a minor version in pyproject.toml, and tests/test_heartbeat.py runs this path against a failing connection.
    """

    heartbeat_state = WAITING_FOR_BROKER

    def ensure_connected(self, conn: Any) -> Any:
        path, retry = heartbeat_path(), conn.ensure_connection
        self.heartbeat_state = WAITING_FOR_BROKER
        safe_touch(path, WAITING_FOR_BROKER)

        # Celery passes its own per-step callback (the shutdown check) and offers no hook, so this one connection's
        # ensure_connection is wrapped to call ours first, then Celery's.
        def ensure_connection(*args: Any, callback: Any = None, **kwargs: Any) -> Any:
            def step() -> None:
                safe_touch(path, WAITING_FOR_BROKER)
                if callback is not None:
                    callback()

            return retry(*args, callback=step, **kwargs)

        conn.ensure_connection = ensure_connection
        try:
            connected = super().ensure_connected(conn)
        finally:
            del conn.ensure_connection  # back to the class's method for any later caller
        self.heartbeat_state = RUNNING
        safe_touch(path, RUNNING)
        return connected


def safe_touch(path: Any, state: str) -> None:
    """A heartbeat write that cannot fail the reconnection: inside kombu's retry loop an exception would end the
    consumer. A full or read-only disk is logged; the probe then reports the stale file, which names the path."""
    try:
        touch(path, state)
    except OSError as exc:
        logger.error("could not write the heartbeat file %s: %s", path, exc)
