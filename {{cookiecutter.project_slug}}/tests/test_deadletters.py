"""Dead letters (deadletters.py) with fakeredis: the cap, the retention period, the argument rule, atomic replay.
One test (marked integration) claims entries from two threads against the session's real redis-server."""

import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.config.settings import settings
from {{ cookiecutter.__package }}.ops import cli as ops
from {{ cookiecutter.__package }}.runtime import deadletters, signals
from {{ cookiecutter.__package }}.runtime.redis_store import client as real_client
from {{ cookiecutter.__package }}.tasks import base
from {{ cookiecutter.__package }}.tasks.orders import process_order


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
    monkeypatch.setattr(time, "time", lambda: now)
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
    assert "hunter2" not in str(fake_redis.hget(deadletters._keys()[0], entry["key"]))
    with pytest.raises(ValueError, match=r"cannot be replayed: arguments redacted \(Password, api_key, token\)"):
        deadletters.replay(app, "id-1")
    assert sent == [] and deadletters.get("id-1"), "a refused replay must keep the entry"


def test_arguments_over_the_limit_are_not_kept(fake_redis: fakeredis.FakeRedis, sent) -> None:
    entry = record("id-1", "x" * (settings.dead_letter_max_args_bytes + 1))
    assert (entry["args"], entry["kwargs"]) == ([], {})
    assert entry["args_preview"].startswith('[["xxx') and len(entry["args_preview"]) == deadletters.PREVIEW_CHARS
    assert "over CELERY_DEAD_LETTER_MAX_ARGS_BYTES" in entry["not_replayable"]
    with pytest.raises(ValueError, match="cannot be replayed"):
        deadletters.replay(app, "id-1")


def test_an_entry_is_replayed_once(fake_redis: fakeredis.FakeRedis, sent) -> None:
    record("id-1", "a", b=1)
    assert deadletters.replay(app, "id-1") == "new-1"
    with pytest.raises(KeyError, match="no dead letter with id or key 'id-1'"):
        deadletters.replay(app, "id-1")  # a second operator, a moment later
    assert sent == [("pkg.task", ["a"], {"b": 1})] and deadletters.count() == 0


def test_of_two_concurrent_claims_only_one_gets_the_entry(fake_redis: fakeredis.FakeRedis) -> None:
    name = record("id-1", "a")["key"]
    assert deadletters._claim(name)["id"] == "id-1"
    with pytest.raises(KeyError):
        deadletters._claim(name)


def test_a_replay_the_broker_refuses_keeps_the_entry(fake_redis: fakeredis.FakeRedis, monkeypatch) -> None:
    record("id-1", "a")

    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", broker_down)
    with pytest.raises(ConnectionError):
        deadletters.replay(app, "id-1")
    assert (deadletters.get("id-1") or {}).get("args") == ["a"] and deadletters.count() == 1
    assert fake_redis.hlen(deadletters._replaying_keys()[0]) == 0, "the entry stayed claimed after a failed send"


class FlakyRedis:
    """fakeredis that can be switched off: every call raises ConnectionError while `down` is set."""

    def __init__(self) -> None:
        self.fake, self.down = fakeredis.FakeRedis(decode_responses=True), False

    def __getattr__(self, name: str) -> Any:
        if self.down:
            raise redis.ConnectionError("Connection refused (the test switched Redis off)")
        return getattr(self.fake, name)


def test_a_replay_cut_off_after_its_claim_leaves_the_entry_stranded_not_lost(monkeypatch, sent, capsys) -> None:
    """The send fails and Redis goes away with it (the same Redis on the Redis variant), or the process dies (an SSH
    drop mid `replay --all`): the entry must survive, be listed as stranded, and be replayable."""
    db = FlakyRedis()
    monkeypatch.setattr(deadletters, "client", lambda: db)
    name = record("id-1", "a")["key"]

    def send_fails_and_redis_with_it(*args: object, **kwargs: object) -> None:
        db.down = True
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", send_fails_and_redis_with_it)
    with pytest.raises((ConnectionError, redis.ConnectionError)):
        deadletters.replay(app, "id-1")
    db.down = False  # Redis and the broker are back
    monkeypatch.setattr(app, "send_task", lambda name, args, kwargs, **_: sent.append(args) or SimpleNamespace(id="n"))
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + deadletters.STRANDED_AFTER + 1)
    assert ops.main(app, ["deadletters", "list"]) == 0
    assert f"{name}  pkg.task  STRANDED: a replay claimed it at" in capsys.readouterr().out, "the entry was lost"
    assert ops.main(app, ["deadletters", "count"]) == 0 and "1 more stranded mid-replay" in capsys.readouterr().err
    assert ops.main(app, ["deadletters", "replay", name]) == 0 and sent == [["a"]], (
        "a stranded entry could not be replayed"
    )
    assert deadletters.stranded() == [] and deadletters.count() == 0


def test_a_replay_in_progress_is_not_taken_over_before_it_is_stranded(fake_redis: fakeredis.FakeRedis) -> None:
    name = record("id-1", "a")["key"]
    deadletters._claim(name)
    with pytest.raises(KeyError, match="being replayed"):
        deadletters._claim(name)  # a second operator while the first is sending


@pytest.mark.integration
def test_two_clients_replaying_at_once_send_each_entry_once(sent) -> None:
    """Two threads, each with its own connection to the session's real redis-server, run `replay --all`'s loop over
    the same entries at the same moment: every entry is sent exactly once."""
    db = real_client()
    keys = [record(f"race-{i}", i)["key"] for i in range(200)]  # the real client: deadletters.client unpatched
    start, lock, errors = threading.Barrier(2), threading.Lock(), []

    def operator() -> None:
        start.wait()
        for name in keys:
            try:
                deadletters.replay(app, name)
            except KeyError:
                with lock:
                    errors.append(name)

    threads = [threading.Thread(target=operator) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(args[0] for _, args, _ in sent) == list(range(200)), "an entry was sent twice or not at all"
    assert len(errors) == 200 and deadletters.count() == 0 and db.hlen(deadletters._replaying_keys()[0]) == 0


def test_dead_letters_in_the_old_list_are_migrated_redacted_and_listed(
    fake_redis: fakeredis.FakeRedis, monkeypatch, capsys
) -> None:
    old = {
        "id": "old-1",
        "task": "pkg.task",
        "args": [{"order_id": "o-1", "email": "someone@example.com"}],
        "kwargs": {},
        "queue": "default",
        "reason": "InvalidPayload: amount",
        "traceback": "",
        "failed_at": "2026-11-30T10:00:00Z",
    }
    fake_redis.rpush(deadletters._legacy_key(), json.dumps(old))
    monkeypatch.setattr(time, "time", lambda: 1_764_500_000.0)  # 2025-11-30: within the retention
    monkeypatch.setattr(settings, "dead_letter_retention", 400 * 86_400)
    deadletters.trim()  # the daily report task runs this
    assert not fake_redis.exists(deadletters._legacy_key()), "the old list is still there"
    [entry] = deadletters.entries()
    assert entry["id"] == "old-1" and entry["failed_at"] == "2026-11-30T10:00:00Z"
    assert entry["args"] == [{"order_id": "o-1", "email": "[redacted]"}]
    assert "someone@example.com" not in json.dumps(fake_redis.hgetall(deadletters._keys()[0]))
    fake_redis.rpush(deadletters._legacy_key(), json.dumps({**old, "id": "old-2"}))
    assert ops.main(app, ["deadletters", "list"]) == 0  # and so do the operator commands
    assert "old-2@" in capsys.readouterr().out and not fake_redis.exists(deadletters._legacy_key())


def test_old_list_entries_past_the_retention_period_are_migrated_once_then_dropped(
    fake_redis: fakeredis.FakeRedis, monkeypatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)  # 2027: all of them past the retention
    for i in range(1200):  # more than one batch
        entry = {"id": f"old-{i}", "task": "pkg.task", "args": [], "kwargs": {}, "failed_at": "2026-01-01T00:00:00Z"}
        fake_redis.rpush(deadletters._legacy_key(), json.dumps(entry))
    fake_redis.rpush(deadletters._legacy_key(), json.dumps({"id": "new", "failed_at": "2027-01-15T08:00:00Z"}))
    assert deadletters.migrate_legacy() == 1201
    assert [entry["id"] for entry in deadletters.entries()] == ["new"] and deadletters.count() == 1
    assert not fake_redis.exists(deadletters._legacy_key())


@pytest.mark.parametrize(
    "arguments",
    [
        {"access_token": "t0k"},
        {"client_secret": "s3cr3t"},
        {"headers": {"X-Api-Key": "k3y"}},
        {"order": {"order_id": "o-1", "email": "someone@example.com"}},
        {"note": "write to someone@example.com please"},
    ],
    ids=["access_token", "client_secret", "X-Api-Key", "Order.email", "address-in-a-string"],
)
def test_credentials_and_e_mail_addresses_are_redacted_by_name_part_and_by_look(
    fake_redis: fakeredis.FakeRedis, arguments: dict
) -> None:
    entry = record("id-1", arguments, "positional: a@example.com")
    stored = str(fake_redis.hget(deadletters._keys()[0], entry["key"]))
    for secret in ("t0k", "s3cr3t", "k3y", "someone@example.com", "a@example.com"):
        assert secret not in stored, f"{secret} kept in clear: {stored}"
    assert entry["not_replayable"].startswith("arguments redacted")


def test_reason_and_traceback_are_cut_to_a_bounded_length(fake_redis: fakeredis.FakeRedis) -> None:
    entry = deadletters.record("id-1", "pkg.task", [], {}, "ValueError: " + "x" * 10_000, "y" * 100_000, "q")
    assert len(entry["reason"]) == deadletters.REASON_CHARS
    assert len(entry["traceback"]) == deadletters.TRACEBACK_CHARS


def test_each_failure_of_one_task_id_is_kept_and_replay_by_id_sends_the_newest(
    fake_redis: fakeredis.FakeRedis, monkeypatch, sent
) -> None:
    now = 1_764_500_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    first = record("settlement-b1", "first")
    now += 10
    second = record("settlement-b1", "second")
    assert first["key"] != second["key"] and deadletters.count() == 2, "one failure overwrote the other"
    deadletters.replay(app, "settlement-b1")
    assert sent == [("pkg.task", ["second"], {})]
    assert [entry["key"] for entry in deadletters.entries()] == [first["key"]]
    deadletters.replay(app, first["key"])  # an older one, by the key list prints
    assert sent[-1] == ("pkg.task", ["first"], {}) and deadletters.count() == 0


def test_the_project_redis_client_does_not_wait_forever() -> None:
    # A hung Redis must fail the call (the poison bound then fails open, logged), not stall every redelivered task.
    options = real_client().connection_pool.connection_kwargs
    assert options.get("socket_timeout") and options.get("socket_connect_timeout"), options


def start_redelivered(task_id: str) -> None:
    """What a worker does when a redelivered message starts: the poison-message check (DeadLetterTask.before_start)."""
    task = process_order
    task.push_request(id=task_id, retries=0, delivery_info={"redelivered": True})
    try:
        task.before_start(task_id, (), {})
    finally:
        task.pop_request()


def test_a_task_cut_off_by_deploys_is_not_counted_as_a_poison_message(fake_redis: fakeredis.FakeRedis) -> None:
    from celery.worker import state

    class Running:  # what the worker's main process knows of a running task (celery.worker.request.Request)
        id, request_dict = "long-1", {"retries": 0}

    running = Running()
    state.active_requests.add(running)  # a WeakSet: `running` stays referenced for the test
    try:
        for _deploy in range(settings.task_max_worker_lost + 1):
            signals.forgive_shutdown(sig="SIGTERM", how="Warm", exitcode=0)  # the worker is told to stop
            start_redelivered("long-1")  # killed past the grace period, put back, started by the next worker
    finally:
        state.active_requests.discard(running)


def test_a_pool_process_that_dies_on_its_own_still_counts(fake_redis: fakeredis.FakeRedis) -> None:
    for _loss in range(settings.task_max_worker_lost - 1):
        start_redelivered("poison-1")
    with pytest.raises(base.WorkerLost, match=f"worker lost {settings.task_max_worker_lost} times"):
        start_redelivered("poison-1")
