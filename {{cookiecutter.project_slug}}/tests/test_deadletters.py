"""Dead letters (deadletters.py) with fakeredis: the cap, the retention period, the argument rule, atomic replay."""

from collections.abc import Iterator
from types import SimpleNamespace

import fakeredis
import pytest

from {{ cookiecutter.__package }} import deadletters
from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.settings import settings


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    fake = fakeredis.FakeRedis(decode_responses=True)
    monkeypatch.setattr(deadletters, "client", lambda: fake)
    yield fake


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """What replay hands to the broker, recorded instead of sent."""
    calls: list[tuple] = []

    def send_task(name: str, args: list, kwargs: dict, **options: object) -> SimpleNamespace:
        calls.append((name, args, kwargs))
        return SimpleNamespace(id=f"new-{len(calls)}")

    monkeypatch.setattr(app, "send_task", send_task)
    return calls


def record(task_id: str, *args: object, **kwargs: object) -> dict:
    return deadletters.record(task_id, "pkg.task", args, kwargs, "ValueError: nope", "", "q")


def test_the_oldest_entries_go_first_over_the_cap(fake_redis: fakeredis.FakeRedis, monkeypatch) -> None:
    monkeypatch.setattr(settings, "dead_letter_max_entries", 3)
    for i in range(5):
        record(f"id-{i}")
    assert deadletters.count() == 3
    assert [entry["id"] for entry in deadletters.entries()] == ["id-2", "id-3", "id-4"]
    assert fake_redis.hlen(deadletters._keys()[0]) == 3, "a dropped entry left its body behind"


def test_entries_past_the_retention_period_are_dropped(fake_redis: fakeredis.FakeRedis, monkeypatch) -> None:
    now = 1_700_000_000.0
    monkeypatch.setattr(deadletters.time, "time", lambda: now)
    record("old")
    now += settings.dead_letter_retention + 1
    record("new")  # every write applies the retention period
    assert [entry["id"] for entry in deadletters.entries()] == ["new"]
    now += settings.dead_letter_retention + 1
    assert deadletters.trim() == 1 and deadletters.count() == 0  # and so does the daily report, on quiet days


def test_credentials_are_redacted_and_such_an_entry_is_not_replayed(fake_redis: fakeredis.FakeRedis, sent) -> None:
    entry = record("id-1", {"user": "a", "Password": "hunter2", "nested": [{"token": "t"}]}, api_key="k")
    assert entry["args"] == [{"user": "a", "Password": "[redacted]", "nested": [{"token": "[redacted]"}]}]
    assert entry["kwargs"] == {"api_key": "[redacted]"}
    assert "hunter2" not in fake_redis.hget(deadletters._keys()[0], "id-1")
    with pytest.raises(ValueError, match=r"cannot be replayed: arguments redacted \(Password, api_key, token\)"):
        deadletters.replay("id-1")
    assert sent == [] and deadletters.get("id-1"), "a refused replay must keep the entry"


def test_arguments_over_the_limit_are_not_kept(fake_redis: fakeredis.FakeRedis, sent) -> None:
    entry = record("id-1", "x" * (settings.dead_letter_max_args_bytes + 1))
    assert (entry["args"], entry["kwargs"]) == ([], {})
    assert entry["args_preview"].startswith('[["xxx') and len(entry["args_preview"]) == deadletters.PREVIEW_CHARS
    assert "over CELERY_DEAD_LETTER_MAX_ARGS_BYTES" in entry["not_replayable"]
    with pytest.raises(ValueError, match="cannot be replayed"):
        deadletters.replay("id-1")


def test_an_entry_is_replayed_once(fake_redis: fakeredis.FakeRedis, sent) -> None:
    record("id-1", "a", b=1)
    assert deadletters.replay("id-1") == "new-1"
    with pytest.raises(KeyError, match="no dead letter with id 'id-1'"):
        deadletters.replay("id-1")  # a second operator, a moment later
    assert sent == [("pkg.task", ["a"], {"b": 1})] and deadletters.count() == 0


def test_of_two_concurrent_takes_only_one_gets_the_entry(fake_redis: fakeredis.FakeRedis) -> None:
    record("id-1", "a")
    assert deadletters._take("id-1")["id"] == "id-1"
    with pytest.raises(KeyError):
        deadletters._take("id-1")


def test_a_replay_the_broker_refuses_keeps_the_entry(fake_redis: fakeredis.FakeRedis, monkeypatch) -> None:
    record("id-1", "a")

    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", broker_down)
    with pytest.raises(ConnectionError):
        deadletters.replay("id-1")
    assert deadletters.get("id-1")["args"] == ["a"] and deadletters.count() == 1
