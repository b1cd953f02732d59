"""Where each task ended: its result state and the dead-letter reasons recorded for it.

Argument: a list of task ids. Prints {id: [state, result or None, [reasons]]}.
"""

from celery.result import AsyncResult
from common import arguments, emit, module

(ids,) = arguments()
app = module("celery_app").app
letters = module("runtime.deadletters").entries()
outcomes = {}
for task_id in ids:
    result = AsyncResult(task_id, app=app)
    value = result.result if result.state == "SUCCESS" else None
    outcomes[task_id] = [result.state, value, [entry["reason"] for entry in letters if entry["id"] == task_id]]
emit(outcomes)
