"""`ops beat`: the beat schedule as Redis holds it (what beat actually runs, not what config/schedule.py says).

    python -m {{ cookiecutter.__package }}.ops beat list       # name, task, schedule, queue, last/next run
    python -m {{ cookiecutter.__package }}.ops beat run NAME   # send one entry's task now, as beat would

Both talk to the Redis in REDBEAT_REDIS_URL / REDIS_URL; `run` publishes with the entry's own queue and expiry.
"""

import sys
from datetime import datetime, timedelta
from typing import Any

import click
from celery import Celery
from celery.schedules import crontab
from celery.schedules import schedule as interval
from redbeat import RedBeatSchedulerEntry
from redbeat.schedulers import ensure_conf, get_redis


def stored_entries(app: Celery[Any]) -> list[RedBeatSchedulerEntry]:
    conf = ensure_conf(app)
    keys = get_redis(app).zrange(conf.schedule_key, 0, -1)
    return [RedBeatSchedulerEntry.from_key(key, app=app) for key in keys]


def next_run(entry: RedBeatSchedulerEntry) -> datetime | None:
    """When the entry is due next, from its schedule and last run (RedBeat's own `due_at` is only a sort key)."""
    if entry.last_run_at is None:
        now: datetime = entry.schedule.now()  # typed here: RedBeat's entry is untyped (Any)
        return now
    remaining = entry.schedule.remaining_estimate(entry.last_run_at)
    return None if remaining is None else entry.schedule.now() + max(remaining, timedelta(0))


def describe(schedule: object) -> str:
    if isinstance(schedule, crontab):
        return "cron " + str(schedule).removeprefix("<crontab: ").split(" (")[0]
    if isinstance(schedule, interval):
        return f"every {schedule.seconds:g}s"
    return str(schedule)  # another schedule type (solar): its own description


def _when(value: datetime | None) -> str:
    if value is None:
        return "never"
    # Whole seconds, rounded: 05:59:59.999 is shown as the 06:00:00 it stands for.
    return (value + timedelta(milliseconds=500)).strftime("%Y-%m-%d %H:%M:%S %Z")


@click.group(help="the beat schedule stored in Redis: list | run NAME")
def beat() -> None:
    pass


@beat.command("list", help="the schedule stored in Redis")
@click.pass_obj
def list_entries(obj: Any) -> None:
    entries = stored_entries(obj.app)
    if not entries:
        print("no schedule in Redis: has beat started against this Redis?", file=sys.stderr)
        click.get_current_context().exit(1)
    print(f"{'name':<24} {'task':<36} {'schedule':<16} {'queue':<10} {'last run':<24} next run")
    for entry in entries:
        task = entry.task.split(".tasks.")[-1]
        queue = entry.options.get("queue", "(routed)")
        print(
            f"{entry.name:<24} {task:<36} {describe(entry.schedule):<16} {queue:<10} "
            f"{_when(entry.last_run_at):<24} {_when(next_run(entry))}"
        )


@beat.command(help="send an entry's task now")
@click.argument("name")
@click.pass_obj
def run(obj: Any, name: str) -> None:
    entries = {entry.name: entry for entry in stored_entries(obj.app)}
    entry = entries.get(name)
    if entry is None:
        print(f"error: no entry {name!r}; known: {', '.join(entries) or 'none'}", file=sys.stderr)
        click.get_current_context().exit(1)
    result = obj.app.send_task(entry.task, args=entry.args, kwargs=entry.kwargs, **entry.options)
    print(f"sent {entry.name} ({entry.task}) as {result.id}")
