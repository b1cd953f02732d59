"""Task modules: where a task is added. Every module of this package is imported when a worker or beat starts
(celery_app.py), so a new task is one new file here, plus a route line in config/queues.py if its tasks belong on a
queue other than the default. base.py holds the task base class, payloads.py the payload models.

This file imports nothing of its own: the task modules import celery_app, which lists them from here.
"""

import pkgutil

# Modules of this package that define no tasks (imported by the task modules themselves).
NOT_TASK_MODULES = ("base", "payloads")


def modules() -> list[str]:
    """The dotted names of the task modules, sorted: what `app.conf.imports` lists. Celery imports them at start,
    and an import error there stops the worker with the module's traceback."""
    # walk_packages: modules in sub-packages too (tasks/billing/invoices.py), so a folder of tasks is not skipped.
    return sorted(
        module.name
        for module in pkgutil.walk_packages(__path__, prefix=f"{__name__}.")
        if not module.ispkg
        and not module.name.rsplit(".", 1)[1].startswith("_")
        and module.name.removeprefix(f"{__name__}.") not in NOT_TASK_MODULES
    )
