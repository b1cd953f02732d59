"""The beat schedule, declared once. RedBeat copies it into Redis when beat starts (and drops entries removed here).

Every entry names its queue and sets `expires`: if beat or the workers were down, a run that is older than its
usefulness is discarded by the worker instead of a backlog of identical runs piling up.

Time zones: crontab entries are read in CELERY_TIMEZONE; everything is stored in UTC. The zone this project was
generated with (settings.py's default):

    {{ cookiecutter.timezone }}

UTC schedules are recommended: they never skip or repeat. In a zone with DST, a 09:30 entry stays at 09:30 local time
(its UTC time moves by an hour twice a year), an entry inside the skipped hour (02:30 on the spring-forward night in
Europe) runs an hour late that night, and one inside the repeated hour runs once. RedBeat stores crontab fields, not a
per-entry zone: to pin a job to local time, set CELERY_TIMEZONE to that zone and keep such jobs out of 01:00-03:00.
See tests/test_schedule.py.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from celery.schedules import crontab, schedule

from .settings import settings

{%- set queues = cookiecutter.__queues.split(',') %}
{%- set q_high = queues[1] if queues | length > 1 else queues[0] %}
{%- set q_low = queues[2] if queues | length > 2 else q_high %}


@dataclass(frozen=True)
class Entry:
    name: str
    task: str
    queue: str
    # Seconds after which an unstarted run is discarded; keep it at or below the interval between runs.
    expires: int
    every: float | None = None  # seconds between runs, or
    cron: str | None = None  # "minute hour day-of-month month day-of-week", read in CELERY_TIMEZONE
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def celery_schedule(self) -> schedule | crontab:
        """Validate the entry and build its schedule; errors name the entry, so a typo fails beat at start."""
        problem = self._problem()
        if problem:
            raise ValueError(f"schedule entry {self.name!r}: {problem}")
        if self.every is not None:
            return schedule(self.every)
        try:
            return crontab.from_string(self.cron or "")  # set: _problem() allows exactly one of every and cron
        except ValueError as exc:
            raise ValueError(f"schedule entry {self.name!r}: bad cron {self.cron!r}: {exc}") from None

    def _problem(self) -> str | None:
        if (self.every is None) == (self.cron is None):
            return "set exactly one of every= and cron="
        if self.every is not None and self.every <= 0:
            return f"every={self.every} must be positive"
        if self.cron is not None and len(self.cron.split()) != 5:
            return f"cron {self.cron!r} must have 5 fields (minute hour day-of-month month day-of-week)"
        if self.queue not in settings.queues:
            return f"queue {self.queue!r} is not declared (CELERY_QUEUES={','.join(settings.queues)})"
        if self.expires <= 0:
            return f"expires={self.expires} must be positive"
        try:
            json.dumps([self.args, self.kwargs])
        except TypeError as exc:
            return f"args/kwargs must be JSON-serializable: {exc}"
        return None


ENTRIES: list[Entry] = [
    Entry(
        name="refresh-eurusd",
        task="{{ cookiecutter.__package }}.tasks.prices.fetch_price",
        every=settings.price_refresh_seconds,
        args=("EURUSD",),
        queue="{{ q_low }}",
        # A refresh older than the next one is worthless.
        expires=max(1, settings.price_refresh_seconds),
    ),
    Entry(
        name="dead-letter-report",
        task="{{ cookiecutter.__package }}.tasks.maintenance.report_dead_letters",
        cron="0 6 * * *",  # 06:00 every day
        queue="{{ queues[0] }}",
        expires=3600,
    ),
]


def beat_schedule() -> dict[str, dict[str, Any]]:
    """The `beat_schedule` setting, built from ENTRIES (validated here, at import of the Celery config)."""
    names = [entry.name for entry in ENTRIES]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"schedule entries {duplicates} are declared more than once")
    return {
        entry.name: {
            "task": entry.task,
            "schedule": entry.celery_schedule(),
            "args": entry.args,
            "kwargs": entry.kwargs,
            "options": {"queue": entry.queue, "expires": entry.expires},
        }
        for entry in ENTRIES
    }
