"""The Celery application: `celery --app {{ cookiecutter.__package }}.celery_app ...` loads this module."""

{% if cookiecutter.broker == "redis" -%}
import logging

{% endif -%}
from celery import Celery, signals

from . import tasks
{% if cookiecutter.broker == "rabbitmq" -%}
from .config.queues import DEAD_LETTER_QUEUES
{% endif -%}
from .config.settings import settings
from .runtime import logs
from .runtime import signals as _signals  # noqa: F401  (connects the handlers that dead-letter refused messages)
from .runtime import task_log as _task_log  # noqa: F401  (connects its signal handlers)
{% if cookiecutter.broker == "redis" -%}
from .runtime.key_migration import warning as unprefixed_keys_warning
from .runtime.redis_transport import register as register_redis_transport
{% endif -%}
from .runtime.worker_steps import HeartbeatStep, QueuePrefetchStep
from .tasks.base import DeadLetterTask

{% if cookiecutter.broker == "redis" -%}
# Before any connection: redis:// URLs get kombu's transport plus the fix in redis_transport.py.
register_redis_transport()

{% endif -%}
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
{%- if cookiecutter.broker == "rabbitmq" %}


@signals.worker_ready.connect
def declare_dead_letter_queues(sender: object, **_: object) -> None:
    """Declare the "<queue>.dead" queues RabbitMQ dead-letters into; no worker consumes them, so -Q never would."""
    with app.connection_for_write() as connection:
        for queue in DEAD_LETTER_QUEUES:
            queue(connection.default_channel).declare()
{%- endif %}
{%- if cookiecutter.broker == "redis" %}


@signals.worker_ready.connect
def warn_about_unprefixed_keys(sender: object, **_: object) -> None:
    """Messages left under kombu's unprefixed keys by a deployment before CELERY_KEY_PREFIX reached the broker."""
    try:
        with app.connection_for_read() as connection:
            message = unprefixed_keys_warning(app, connection.default_channel)
    except Exception as exc:  # a check, not a reason to stop a worker that is otherwise ready
        logging.getLogger(__name__).warning("could not check for unprefixed broker keys: %s", exc)
        return
    if message:
        logging.getLogger(__name__).warning(message)
{%- endif %}
