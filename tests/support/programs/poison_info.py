"""What the poison-message test needs to know. Prints {"bound": task_max_worker_lost, "runs_key": the runs list}."""

from common import diagnostics, emit, module

settings = module("config.settings").settings
emit({"bound": settings.task_max_worker_lost, "runs_key": diagnostics().runs_key()})
