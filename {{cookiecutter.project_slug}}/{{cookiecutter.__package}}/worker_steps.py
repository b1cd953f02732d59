"""Worker bootsteps: per-queue prefetch, and the heartbeat file that the health check reads."""

import time
from typing import Any

from celery import bootsteps

from .heartbeat import HEARTBEAT_INTERVAL, heartbeat_path
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
        self.tref = None

    def start(self, worker: Any) -> None:
        self.touch()
        self.tref = worker.timer.call_repeatedly(HEARTBEAT_INTERVAL, self.touch)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        # A stopped worker is unhealthy at once, not 30 s later.
        self.path.unlink(missing_ok=True)

    def touch(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{time.time():.3f}\n")
