"""What the poison-message test needs to know. Prints {"bound": task_max_worker_lost, "runs_key": the runs list}."""

from common import emit, module

settings = module("settings").settings
emit({"bound": settings.task_max_worker_lost, "runs_key": module("tasks.diagnostics").runs_key()})
