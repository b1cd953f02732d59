"""The Celery application: `celery --app {{ cookiecutter.__package }}.celery_app ...` loads this module."""

from celery import Celery, signals

from . import tasks
from .config.settings import settings
from .runtime import broker_{{ cookiecutter.broker }} as broker  # the broker's part, chosen by file name
from .runtime import control as _control  # noqa: F401  (registers the inspect command `ops doctor` asks)
from .runtime import errors as _errors  # noqa: F401  (Sentry, if SENTRY_DSN is set: set up at worker and beat start)
from .runtime import logs
from .runtime import signals as _signals  # noqa: F401  (connects the handlers that dead-letter refused messages)
from .runtime import task_log as _task_log  # noqa: F401  (connects its signal handlers)
from .runtime import tracing as _tracing  # noqa: F401  (OpenTelemetry, if OTEL_EXPORTER_OTLP_ENDPOINT is set)
from .runtime.worker_steps import HeartbeatStep, QueuePrefetchStep
from .tasks.base import DeadLetterTask

broker.prepare()  # before any connection; importing the module connected its signal handlers
# Every task records its final failure as a dead letter (tasks/base.py).
app = Celery(__package__, task_cls=DeadLetterTask)
app.config_from_object(f"{__package__}.config.celeryconfig")
# Every module of the tasks package (a new file there is all a new task needs), plus CELERY_EXTRA_TASK_MODULES.
# Imported when the worker or beat starts, not lazily: a module that fails to import stops it at start.
app.conf.imports = (*tasks.modules(), *settings.extra_task_modules)
app.steps["worker"].update({QueuePrefetchStep, HeartbeatStep})


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    """Replace Celery's log setup in worker and beat with ours (logs.py): the same format as the web process."""
    logs.configure(settings.log_format, loglevel or "INFO")
