"""Worker bootsteps: per-queue prefetch, and the heartbeat file that the health check reads (and the consumer that
keeps touching it while the worker reconnects to its broker)."""

from typing import Any

from celery import bootsteps
from celery.worker.consumer import Consumer

from .heartbeat import WAITING_FOR_BROKER, heartbeat_interval, heartbeat_path, heartbeat_stale_after, touch
from .queues import prefetch_for
from .settings import settings


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
        touch(self.path)


class HeartbeatConsumer(Consumer):
    """Celery's consumer, touching the heartbeat while it waits for the broker (celeryconfig.worker_consumer).

    While the broker is down the event loop does not run: the main thread sits in kombu's connection retry loop, which
    sleeps up to 30 s between attempts in 1 s steps and calls a callback at each step. That loop is progress (it
    connects as soon as the broker answers), so each step touches the heartbeat, marked "waiting-for-broker". A main
    thread stuck anywhere else still lets the file go stale.
    """

    def ensure_connected(self, conn: Any) -> Any:
        path, retry = heartbeat_path(), conn.ensure_connection
        touch(path, WAITING_FOR_BROKER)

        # Celery passes its own per-step callback (the shutdown check) and offers no hook, so this one connection's
        # ensure_connection is wrapped to call ours first, then Celery's.
        def ensure_connection(*args: Any, callback: Any = None, **kwargs: Any) -> Any:
            def step() -> None:
                touch(path, WAITING_FOR_BROKER)
                if callback is not None:
                    callback()

            return retry(*args, callback=step, **kwargs)

        conn.ensure_connection = ensure_connection
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection  # back to the class's method for any later caller
