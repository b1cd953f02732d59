"""Remote-control commands this project adds to its workers (Celery's `inspect`/`control` mechanism).

celery_app.py imports this module, so every worker answers them. `ops doctor` asks `doctor_probe`.
"""

from typing import Any

from celery.worker.control import inspect_command


@inspect_command()
def doctor_probe(state: Any, **_: Any) -> dict[str, Any]:
    """Whether this worker sends task events now (Celery's enable_events/disable_events change it at run time)."""
    dispatcher = state.consumer.event_dispatcher
    groups = getattr(dispatcher, "groups", None)
    # groups None: every event group (started with -E); otherwise only those listed ("worker" heartbeats by default).
    on = bool(dispatcher is not None and dispatcher.enabled and (not groups or "task" in groups))
    return {"task_events": on}
