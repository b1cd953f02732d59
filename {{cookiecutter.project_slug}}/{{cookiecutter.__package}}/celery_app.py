"""The Celery application: `celery --app {{ cookiecutter.__package }}.celery_app ...` loads this module."""

{% if cookiecutter.broker == "redis" -%}
import logging

{% endif -%}
from celery import Celery, signals

from . import guards as _guards  # noqa: F401  (connects the handlers that dead-letter refused messages)
from . import logs, task_log  # noqa: F401  (task_log connects its signal handlers)
{% if cookiecutter.broker == "rabbitmq" -%}
from .queues import dead_letter_queues
{% else -%}
from .key_migration import warning as unprefixed_keys_warning
from .redis_transport import register as register_redis_transport
{% endif -%}
from .settings import settings
from .worker_steps import HeartbeatStep, QueuePrefetchStep

{% if cookiecutter.broker == "redis" -%}
# Before any connection: redis:// URLs get kombu's transport plus the fix in redis_transport.py.
register_redis_transport()

{% endif -%}
# Every task records its final failure as a dead letter (deadletters.py).
app = Celery(__package__, task_cls=f"{__package__}.deadletters:DeadLetterTask")
app.config_from_object(f"{__package__}.celeryconfig")
# Task modules are listed, not autodiscovered, so a missing import fails at start rather than at first use.
app.conf.imports = (
    "{{ cookiecutter.__package }}.tasks.orders",
    "{{ cookiecutter.__package }}.tasks.notifications",
    "{{ cookiecutter.__package }}.tasks.prices",
    "{{ cookiecutter.__package }}.tasks.workflows",
    "{{ cookiecutter.__package }}.tasks.maintenance",
    "{{ cookiecutter.__package }}.tasks.diagnostics",
    "{{ cookiecutter.__package }}.tasks.reports",
    # Not tasks: registers the inspect command `doctor` asks each worker (doctor.py).
    "{{ cookiecutter.__package }}.doctor",
)
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
        for queue in dead_letter_queues():
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
