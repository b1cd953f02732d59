"""The beat scheduler's sending rules within one tick (beat_scheduler.py): no send after a connection error, none
once the tick has run for half the lock timeout. The Redis restart itself is covered by the template's boot tests."""

import time

import pytest
from kombu.exceptions import OperationalError
from redbeat import RedBeatScheduler

from {{ cookiecutter.__package }}.runtime.beat_scheduler import Scheduler, connection_error, describe


class Due:
    """An entry that is always due (RedBeat's maybe_due asks is_due, then sends)."""

    name = task = "due"

    def is_due(self) -> tuple[bool, float]:
        return True, 1.0


@pytest.fixture
def scheduler() -> Scheduler:
    # The sending rules only: no app, no Redis (RedBeat's tick renews the lock before it gets here).
    scheduler = Scheduler.__new__(Scheduler)
    scheduler.lock_key, scheduler.lock_timeout = "lock", 20
    scheduler._abort_tick, scheduler._renewed_at = False, time.monotonic()
    return scheduler


def test_a_tick_stops_sending_at_its_first_connection_error(monkeypatch, scheduler: Scheduler) -> None:
    sent = []

    def unreachable_broker(self, entry, *args, **kwargs):
        sent.append(entry)
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(RedBeatScheduler, "apply_async", unreachable_broker)
    for _ in range(3):
        scheduler.maybe_due(Due())
    assert len(sent) == 1, "entries after the first connection error must wait for the next tick (lock renewed)"


def test_no_send_once_the_tick_ran_for_half_the_lock_timeout(monkeypatch, scheduler: Scheduler) -> None:
    sent = []
    monkeypatch.setattr(RedBeatScheduler, "apply_async", lambda self, entry, *a, **k: sent.append(entry))
    scheduler.maybe_due(Due())
    scheduler._renewed_at = time.monotonic() - scheduler.lock_timeout / 2 - 1
    scheduler.maybe_due(Due())
    assert len(sent) == 1


def test_errors_are_named_for_their_fix() -> None:
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert "refuses beat's credentials" in describe(AuthenticationError("invalid username-password pair"))
    assert describe(RedisConnectionError("Error 111")).startswith("Redis unreachable")
    try:
        try:
            raise RedisConnectionError("Error 111")
        except RedisConnectionError as exc:
            raise RuntimeError("Couldn't apply scheduled task") from exc
    except RuntimeError as wrapped:
        assert connection_error(wrapped), "Celery wraps a failed publish; the cause counts"
    assert not connection_error(ValueError("bad args"))
