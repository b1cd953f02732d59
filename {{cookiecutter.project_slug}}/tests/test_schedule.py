"""The beat schedule: validated at import, routed to declared queues, and DST behaviour written down as tests."""

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab

from {{ cookiecutter.__package }}.config.schedule import ENTRIES, Entry, beat_schedule
from {{ cookiecutter.__package }}.config.settings import settings

QUEUE = settings.queues[0]


def test_every_entry_has_a_declared_queue_and_an_expiry() -> None:
    for name, entry in beat_schedule().items():
        assert entry["options"]["queue"] in settings.queues, name
        assert entry["options"]["expires"] > 0, name


def test_schedule_has_a_crontab_and_an_interval_entry() -> None:
    kinds = {type(entry.celery_schedule()).__name__ for entry in ENTRIES}
    assert kinds == {"crontab", "schedule"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry("nightly", "t", QUEUE, expires=60, cron="61 * * * *"), "'nightly': bad cron"),
        (Entry("short", "t", QUEUE, expires=60, cron="0 6 * *"), "'short': cron '0 6 * *' must have 5"),
        (Entry("typo", "t", "no-such-queue", expires=60, every=10), "'typo': queue 'no-such-queue' is not declared"),
        (Entry("both", "t", QUEUE, expires=60, every=10, cron="0 6 * * *"), "'both': set exactly one"),
        (Entry("args", "t", QUEUE, expires=60, every=10, args=(object(),)), "'args': args/kwargs"),
    ],
    ids=["bad-cron-field", "missing-cron-field", "undeclared-queue", "two-schedules", "unserializable-args"],
)
def test_bad_entries_fail_with_their_name(entry: Entry, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        entry.celery_schedule()


def test_duplicate_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("{{ cookiecutter.__package }}.config.schedule.ENTRIES", [ENTRIES[0], ENTRIES[0]])
    with pytest.raises(ValueError, match="declared more than once"):
        beat_schedule()


PARIS = ZoneInfo("Europe/Paris")


def next_run(cron: crontab, last: datetime) -> datetime:
    last_run_at, delta, _ = cron.remaining_delta(last)
    # Through UTC: adding a timedelta to an aware datetime is wall-clock arithmetic, which can land on a local time that
    # does not exist; the UTC instant is what beat acts on.
    return (last_run_at + delta).astimezone(UTC).astimezone(PARIS)


@pytest.fixture
def paris_app() -> Celery[Any]:
    app = Celery(set_as_current=False)
    app.conf.timezone = "Europe/Paris"  # type: ignore[misc,assignment]  # Celery takes a zone name; the stubs say a read-only tzinfo
    app.conf.enable_utc = True
    return app


def test_local_time_entry_keeps_its_wall_clock_time_across_dst(paris_app: Celery) -> None:
    cron = crontab(hour=9, minute=30, app=paris_app)
    # Spring forward (29 March 2026): still 09:30 in Paris, so one hour earlier in UTC.
    run = next_run(cron, datetime(2026, 3, 28, 9, 30, tzinfo=PARIS))
    assert (run.day, run.hour, run.minute, (run.utcoffset() or timedelta(0)).total_seconds()) == (29, 9, 30, 7200)


def test_entry_in_the_skipped_hour_runs_once_an_hour_late(paris_app: Celery) -> None:
    cron = crontab(hour=2, minute=30, app=paris_app)
    run = next_run(cron, datetime(2026, 3, 28, 2, 30, tzinfo=PARIS))
    # 02:30 does not exist on 29 March in Paris: it runs at 03:30 local (01:30 UTC), once.
    assert (run.day, run.hour, run.minute) == (29, 3, 30)
    following = next_run(cron, run)
    assert (following.day, following.hour, following.minute) == (30, 2, 30)


def test_entry_in_the_repeated_hour_runs_once(paris_app: Celery) -> None:
    cron = crontab(hour=2, minute=30, app=paris_app)
    run = next_run(cron, datetime(2026, 10, 24, 2, 30, tzinfo=PARIS))
    following = next_run(cron, run)
    # 02:30 happens twice on 25 October; the entry runs at the first one only, then the next day.
    assert (run.day, run.hour, (run.utcoffset() or timedelta(0)).total_seconds()) == (25, 2, 7200)
    assert (following.day, following.hour) == (26, 2)
