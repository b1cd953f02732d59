"""The reasons recorded for a task id among the dead letters. Argument: the task id. Prints the list."""

from common import arguments, emit, module

(task_id,) = arguments()
emit([entry["reason"] for entry in module("runtime.deadletters").entries() if entry["id"] == task_id])
