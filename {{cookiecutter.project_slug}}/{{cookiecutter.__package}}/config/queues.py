"""The queues this project declares, how each is tuned, and which tasks go where.

Adding a queue: README.md, "Add a queue" (its name in CELERY_QUEUES, a profile and a route below, and a worker in each
deployment file). How a queue is declared on the broker (exchange type, queue arguments, dead-letter queues) is in
queues_{{ cookiecutter.broker }}.py.
"""

from dataclasses import dataclass

# The broker's part, chosen by file name (one of the two exists in a project).
{% if cookiecutter.broker == "rabbitmq" -%}
from .queues_rabbitmq import DEAD_LETTER_QUEUES as DEAD_LETTER_QUEUES  # re-exported (the "as" says so to mypy)
from .queues_rabbitmq import declare, exchange_name
{%- else -%}
from .queues_redis import DEAD_LETTER_QUEUES as DEAD_LETTER_QUEUES  # re-exported (the "as" says so to mypy)
from .queues_redis import declare, exchange_name
{%- endif %}
from .settings import settings

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
    # New queues' profiles go below this line (README.md, "Add a queue").
}

# Routes by task module, so a new task lands on the queue of its module without touching this table. A route to a
# queue that is not declared fails at import (below) instead of publishing to a queue nobody consumes.
TASK_ROUTES: dict[str, dict[str, str]] = {
    # recipe: a new task module's route goes below this line (unrouted tasks go to the default queue, the first)
    "{{ cookiecutter.__package }}.tasks.orders.*": {"queue": "{{ queues[0] }}"},
    "{{ cookiecutter.__package }}.tasks.workflows.*": {"queue": "{{ queues[0] }}"},
    "{{ cookiecutter.__package }}.tasks.maintenance.*": {"queue": "{{ queues[0] }}"},
    "{{ cookiecutter.__package }}.tasks.notifications.*": {"queue": "{{ q_high }}"},
    "{{ cookiecutter.__package }}.tasks.prices.*": {"queue": "{{ q_low }}"},
    "{{ cookiecutter.__package }}.tasks.catalog.*": {"queue": "{{ q_low }}"},
    "{{ cookiecutter.__package }}.tasks.rates.*": {"queue": "{{ q_low }}"},
}


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
TASK_QUEUES = tuple(declare(name) for name in settings.queues)
DEFAULT_EXCHANGE = exchange_name(DEFAULT_QUEUE)
