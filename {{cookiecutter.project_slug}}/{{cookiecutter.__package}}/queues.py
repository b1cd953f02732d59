"""The queues this project declares, how each is tuned, and which tasks go where.

Adding a queue: add it to CELERY_QUEUES (settings.py default and .env.example), give it a profile below, route tasks
to it in TASK_ROUTES, and start a worker for it (`WORKER_QUEUES=name bin/worker`).
"""

from dataclasses import dataclass

from kombu import Exchange, Queue

{% if cookiecutter.broker == "rabbitmq" -%}
from .settings import DELIVERY_LIMIT, settings
{%- else -%}
from .settings import settings
{%- endif %}

{%- set queues = cookiecutter.__queues.split(',') %}
{%- set q_high = queues[1] if queues | length > 1 else queues[0] %}
{%- set q_low = queues[2] if queues | length > 2 else q_high %}

DEFAULT_QUEUE = settings.queues[0]


@dataclass(frozen=True)
class QueueProfile:
    # How many messages each pool process reserves ahead. >1 saves broker round trips for many short tasks; 1 keeps a
    # long task from holding messages that an idle worker could run (with acks_late they would wait unacknowledged).
    # https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits
    prefetch_multiplier: int


# TODO: set each queue's profile from what its tasks do (short and many -> 4, long or latency-sensitive -> 1).
PROFILES: dict[str, QueueProfile] = {
{%- for name in queues %}
    {%- if loop.first %}
    # The default queue gets many short tasks: prefetch a few to save round trips.
    "{{ name }}": QueueProfile(prefetch_multiplier=4),
    {%- else %}
    "{{ name }}": QueueProfile(prefetch_multiplier=1),
    {%- endif %}
{%- endfor %}
}

# Routes by task module, so a new task lands on the queue of its module without touching this table. A route to a
# queue that is not declared fails at import (below) instead of publishing to a queue nobody consumes.
TASK_ROUTES: dict[str, dict[str, str]] = {
    "{{ cookiecutter.__package }}.tasks.orders.*": {"queue": "{{ queues[0] }}"},
    "{{ cookiecutter.__package }}.tasks.workflows.*": {"queue": "{{ queues[0] }}"},
    "{{ cookiecutter.__package }}.tasks.maintenance.*": {"queue": "{{ queues[0] }}"},
    "{{ cookiecutter.__package }}.tasks.diagnostics.*": {"queue": "{{ queues[0] }}"},
    "{{ cookiecutter.__package }}.tasks.notifications.*": {"queue": "{{ q_high }}"},
    "{{ cookiecutter.__package }}.tasks.prices.*": {"queue": "{{ q_low }}"},
    "{{ cookiecutter.__package }}.tasks.reports.*": {"queue": "{{ q_low }}"},
}


def exchange_name(name: str) -> str:
    """The exchange tasks for queue `name` are published to."""
{%- if cookiecutter.broker == "rabbitmq" %}
    return f"{name}.topic"
{%- else %}
    return name
{%- endif %}


def _declare(name: str) -> Queue:
{%- if cookiecutter.broker == "rabbitmq" %}
    # Quorum queues are replicated and durable; a message redelivered more than x-delivery-limit times (a poison
    # message that keeps killing workers) is dead-lettered to "<name>.dead" instead of looping forever. The project's
    # own bound (CELERY_TASK_MAX_WORKER_LOST, below this one) usually comes first and records the reason.
    # A topic exchange, not direct: Celery's native delayed delivery routes a countdown/ETA task through RabbitMQ's
    # delay queues and back to this exchange when it is due, so no worker holds it (with a prefetch of 1 a held task
    # would block the worker) and no consumer_timeout runs against it. The routing key "<name>" has no wildcard, so it
    # still matches this queue only. Named "<name>.topic", not "<name>": projects generated earlier declared "<name>"
    # as a direct exchange, and RabbitMQ refuses to redeclare an exchange with another type (PRECONDITION_FAILED), so
    # a new name lets old and new processes publish side by side during a rolling deploy; the queue stays bound to the
    # old exchange too until it is deleted (RUNBOOK.md).
    return Queue(
        name,
        Exchange(exchange_name(name), type="topic"),
        routing_key=name,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
            "x-dead-letter-routing-key": dead_letter_queue_name(name),
        },
    )
{%- else %}
    # One direct exchange per queue keeps routing explicit and lets `celery purge -Q name` touch one queue only.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)
{%- endif %}

{%- if cookiecutter.broker == "rabbitmq" %}


# RabbitMQ moves rejected and over-delivered messages here (native dead-lettering); nothing consumes these queues, an
# operator inspects and replays them. Application-level dead letters (bad payloads, exhausted retries) go to Redis, see
# deadletters.py.
DEAD_LETTER_EXCHANGE = Exchange("dead-letters", type="direct")


def dead_letter_queue_name(name: str) -> str:
    return f"{name}.dead"


def dead_letter_queues() -> list[Queue]:
    return [
        Queue(
            dead_letter_queue_name(name),
            DEAD_LETTER_EXCHANGE,
            routing_key=dead_letter_queue_name(name),
            queue_arguments={"x-queue-type": "quorum"},
        )
        for name in settings.queues
    ]
{%- endif %}


def _check() -> None:
    missing_profiles = sorted(set(settings.queues) - PROFILES.keys())
    if missing_profiles:
        raise RuntimeError(f"queues {missing_profiles} have no entry in PROFILES (queues.py); add one")
    for name, profile in PROFILES.items():
        # The broker timeouts are sized from the largest prefetch (settings.py), so a larger one must raise it too.
        if profile.prefetch_multiplier > settings.max_prefetch_multiplier:
            raise RuntimeError(
                f"queue {name!r} prefetches {profile.prefetch_multiplier}, over CELERY_MAX_PREFETCH_MULTIPLIER "
                f"({settings.max_prefetch_multiplier}); raise that setting with it"
            )
    for pattern, route in TASK_ROUTES.items():
        if route["queue"] not in settings.queues:
            raise RuntimeError(f"TASK_ROUTES sends {pattern} to {route['queue']!r}, not one of {settings.queues}")


def prefetch_for(queue_names: list[str]) -> int:
    """The prefetch a worker consuming these queues should use: the most cautious of their profiles."""
    return min(PROFILES[name].prefetch_multiplier for name in queue_names)


_check()
TASK_QUEUES = tuple(_declare(name) for name in settings.queues)
DEFAULT_EXCHANGE = exchange_name(DEFAULT_QUEUE)
