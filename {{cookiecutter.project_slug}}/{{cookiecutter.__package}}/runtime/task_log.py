"""One structured log line per task outcome: task id, name, queue, duration and outcome as fields; the same outcome
is added to the Redis counters bin/metrics serves (task_counters.py).

Connected through Celery signals, which run in the process that executes the task (the pool child).
"""

import logging
import time
from typing import Any

from celery import signals

from . import counters as task_counters

logger = logging.getLogger(__name__)
_started: dict[str, float] = {}  # task id -> monotonic start, per pool process


@signals.task_prerun.connect
def _start(task_id: str, **_: Any) -> None:
    _started[task_id] = time.monotonic()


@signals.task_postrun.connect
def _finish(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    seconds = time.monotonic() - started if started is not None else None
    duration_ms = round(seconds * 1000, 1) if seconds is not None else None
    fields = {
        "task_id": task_id,
        "task_name": task.name,
        "queue": (task.request.delivery_info or {}).get("routing_key"),
        "duration_ms": duration_ms,
        # SUCCESS, FAILURE, RETRY, REJECTED, IGNORED: Celery's own state names.
        "outcome": state,
    }
    log = logger.warning if state in ("FAILURE", "REJECTED") else logger.info
    outcome = (state or "done").lower()
    log("task %s[%s] %s in %s ms (queue %s)", task.name, task_id, outcome, duration_ms, fields["queue"], extra=fields)
    task_counters.record(task.name, fields["queue"], state, seconds)
