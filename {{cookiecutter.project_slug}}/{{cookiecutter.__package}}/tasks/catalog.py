"""Catalog imports: the long-running task pattern, reporting its progress while it runs.

A caller, the web app's status endpoint (GET /results/<id>), `ops active` and `doctor` read the progress from the
result backend: state PROGRESS with {"percent", "message"}. One result-backend write per step, so report per step of
real work (a page, a batch), not per item.
"""

import time
from typing import Any

from celery import Task

from ..celery_app import app

# The custom state a running import is in between STARTED and SUCCESS; its meta is {"percent": int, "message": str}.
PROGRESS = "PROGRESS"


# Stores its result: the caller polls the progress and then reads the summary. A re-run (redelivery) imports the same
# catalog again: harmless when each step writes by key (upsert), as the real work must.
@app.task(bind=True, ignore_result=False)
def import_catalog(self: Task[Any, Any], name: str, steps: int = 5, step_seconds: float = 1.0) -> dict[str, Any]:
    """Stand-in for a catalog imported in `steps` steps (pages, batches) of `step_seconds` each."""
    for done in range(1, steps + 1):
        time.sleep(step_seconds)  # TODO: one step of the real work
        percent = round(100 * done / steps)
        # update_state writes to the result backend whether or not results are ignored; the last step is SUCCESS.
        if done < steps:
            self.update_state(state=PROGRESS, meta={"percent": percent, "message": f"{name}: step {done} of {steps}"})
    return {"name": name, "steps": steps}
