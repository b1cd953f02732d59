"""Error tracking with Sentry: off unless SENTRY_DSN is set (config/settings.py), then one event per final failure.

What is sent, and when:
- A task's final failure (the one that makes a dead letter, tasks/base.py): one event, tagged with the task name, its
  queue and how many retries it had. A retry is not a failure yet and sends nothing; a message the worker refuses
  (runtime/signals.py logs it at ERROR) is one event too, through the SDK's logging integration.
- Beat check-ins (Sentry Crons): beat reports "in progress" when it sends a scheduled task, the worker "ok" or
  "error" when it ends, so a schedule that stops firing pages through Sentry. The SDK supports RedBeat (it wraps
  RedBeatScheduler.apply_async, which runtime/beat_scheduler.py calls). Sentry Crons takes whole minutes only: an
  entry running more often than once a minute is left out with a warning in beat's log.
{%- if cookiecutter.use_web == "y" %}
- The web process: unhandled exceptions in a route (a bug, a 500); its 503s (broker unreachable) are answers, not
  errors, and the alert rules cover the outage.
{%- endif %}
Not sent: task arguments and local variables (they may hold personal data), performance traces (OpenTelemetry does
tracing, runtime/tracing.py). Not initialised in the exporter (bin/metrics): its failures show as a failed scrape.

Initialised once per process at its start, before the processes that do the work are forked: in the worker's main
process (celeryd_init; refused messages are handled there, and the pool processes inherit the client) and in beat
(beat_init){% if cookiecutter.use_web == "y" %}, and when web.py is imported (before its routes are declared, which the FastAPI integration wraps){% endif %}.
The SDK starts its sending thread in each process on first use, so a fork is safe.
"""

import logging
from typing import Any, cast

import sentry_sdk
from celery import signals
from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.celery import CeleryIntegration
{%- if cookiecutter.use_web == "y" %}
from sentry_sdk.integrations.fastapi import FastApiIntegration
{%- endif %}
from sentry_sdk.integrations.logging import ignore_logger
{%- if cookiecutter.use_web == "y" %}
from sentry_sdk.integrations.starlette import StarletteIntegration
{%- endif %}
from sentry_sdk.types import Event, Hint

from ..config.settings import settings

logger = logging.getLogger(__name__)
# ERROR log records that repeat a failure reported on its own, by logger and message: billiard's line for a pool
# process that died, and the worker's "Task handler raised error" for that loss (the message is delivered again, like
# a retry, and the final WorkerLost is reported once) or for a hard time limit ("Hard time limit exceeded" is that
# one's event). Without this a poison message made seven events instead of one.
REPEATED_LOG_RECORDS = (
    ("multiprocessing", "Process %r pid:%r exited with %r"),
    ("celery.worker.request", "Task handler raised error: %r"),
)
# Loggers whose ERROR lines never become events (nor breadcrumbs). Celery's consumer quotes the whole message body
# of a message it refuses (task arguments: personal data; runtime/signals.py logs the refusal without them, and that
# line is the event) and logs each reconnection attempt while the broker is away (an event per retry per worker);
# the OpenTelemetry exporter logs each batch it cannot send while the collector is away.
IGNORED_LOGGERS = ("celery.worker.consumer.consumer", "opentelemetry.*")


def init(process: str) -> bool:
    """Start sending errors to Sentry if SENTRY_DSN is set; once per process. True if it is on."""
    if not settings.sentry_dsn:
        return False
    if sentry_sdk.is_initialized():
        return True  # a pool process forked from an initialised worker: the client came with the fork
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment or settings.environment,
        release=settings.sentry_release,
        sample_rate=settings.sentry_sample_rate,
        # No performance data (transactions): tracing is OpenTelemetry's job here, and transactions are billed apart.
        traces_sample_rate=None,
        # Task arguments are replaced by "[Filtered]" (the SDK's default; they may hold e-mail addresses), and so are
        # stack frames' local variables, which hold the same payloads. The dead letter keeps the redacted arguments.
        send_default_pii=False,
        include_local_variables=False,
        integrations=_integrations(),
        before_send=_drop_repeats,
    )
    for name in IGNORED_LOGGERS:
        ignore_logger(name)
    # Which process sent it: worker, beat or web (the host name is already there, as server_name).
    sentry_sdk.get_global_scope().set_tag("process", process)
    logger.info("errors are reported to Sentry (environment %s)", settings.sentry_environment or settings.environment)
    return True


def _integrations() -> list[Integration]:
    # The SDK enables the others it finds installed (logging, redis, httpx...) with their defaults.
    return [
        # monitor_beat_tasks: Sentry Crons check-ins for every beat entry (once a minute or less often).
        CeleryIntegration(monitor_beat_tasks=True),
{%- if cookiecutter.use_web == "y" %}
        # Only unhandled exceptions: a 503 is this API's answer to a broker outage, not a bug.
        StarletteIntegration(failed_request_status_codes=set()),
        FastApiIntegration(failed_request_status_codes=set()),
{%- endif %}
    ]


def _drop_repeats(event: Event, _: Hint) -> Event | None:
    record = (event.get("logger"), cast(dict[str, Any], event.get("logentry") or {}).get("message"))
    return None if record in REPEATED_LOG_RECORDS else event


def report_final_failure(exc: BaseException) -> None:
    """Send a task's final failure, called by DeadLetterTask.on_failure. The SDK's Celery integration has already sent
    the failures raised by the task's own code, and its dedupe drops this second capture of the same exception; what
    it cannot see is sent here: WorkerLost, raised before the task runs (the poison-message bound, tasks/base.py)."""
    if sentry_sdk.is_initialized():
        sentry_sdk.capture_exception(exc)


@signals.task_prerun.connect
def _tag_task(task: Any = None, **_: Any) -> None:
    """The tags an operator filters failures by. Set on the scope the Celery integration opens for each task run, so
    they go with that run's events only."""
    if task is None or not sentry_sdk.is_initialized():
        return
    request = task.request
    sentry_sdk.set_tags(
        {
            "celery_task_name": task.name,
            "celery_queue": (request.delivery_info or {}).get("routing_key") or "",
            "celery_retries": request.retries or 0,
        }
    )


@signals.celeryd_init.connect
def _init_worker(**_: Any) -> None:
    init("worker")


@signals.worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    # A forked pool process already has the client (init returns at once); a spawned one (macOS) starts afresh.
    init("worker")


@signals.beat_init.connect
def _init_beat(**_: Any) -> None:
    init("beat")
