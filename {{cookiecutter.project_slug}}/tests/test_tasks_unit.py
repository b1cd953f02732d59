"""Task logic in isolation (fakeredis, direct calls): fast checks of the patterns. Integration tests prove them live."""

import time
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
from celery import Task
from celery.exceptions import Retry

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.config.settings import settings
from {{ cookiecutter.__package }}.runtime import deadletters, idempotency, redis_store
from {{ cookiecutter.__package }}.tasks import notifications, prices
from {{ cookiecutter.__package }}.tasks.notifications import send_receipt
from {{ cookiecutter.__package }}.tasks.payloads import InvalidPayload, Order, parse
from {{ cookiecutter.__package }}.tasks.workflows import convert_order, settlement_failed, summarize

GOOD = {"order_id": "o-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    fake = fakeredis.FakeRedis(decode_responses=True)
    monkeypatch.setattr(redis_store, "client", lambda: fake)
    monkeypatch.setattr(idempotency, "client", lambda: fake)
    monkeypatch.setattr(deadletters, "client", lambda: fake)
    monkeypatch.setattr(notifications, "client", lambda: fake)
    yield fake


def test_order_amount_is_decimal() -> None:
    assert parse(Order, GOOD).amount == Decimal("19.99")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"amount": "-1"}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"amout": "1"}, "amout"),
        ({"amount": "0.001"}, "amount"),
    ],
)
def test_bad_orders_are_refused_with_the_field_named(change: dict, problem: str) -> None:
    with pytest.raises(InvalidPayload, match=problem):
        parse(Order, {**GOOD, **change})


def test_idempotency_claims_once(fake_redis: fakeredis.FakeRedis) -> None:
    assert idempotency.claim("k", "t1", lock_ttl=60) is idempotency.Claim.CLAIMED
    assert idempotency.claim("k", "t2", lock_ttl=60) is idempotency.Claim.BUSY
    assert idempotency.mark_done("k", "t1") is True
    assert idempotency.claim("k", "t3", lock_ttl=60) is idempotency.Claim.DONE


def test_released_claim_can_be_taken_again(fake_redis: fakeredis.FakeRedis) -> None:
    idempotency.claim("k", "t1", lock_ttl=60)
    assert idempotency.release("k", "t1") is True
    assert idempotency.claim("k", "t2", lock_ttl=60) is idempotency.Claim.CLAIMED


def expire(fake: fakeredis.FakeRedis, name: str) -> None:
    """What Redis does once the lock TTL passes."""
    fake.delete(redis_store.key("idempotency", name))


def test_a_stale_release_leaves_the_next_deliverys_claim(fake_redis: fakeredis.FakeRedis) -> None:
    # The first delivery's claim expired while it still ran; a second delivery claimed the key since.
    idempotency.claim("k", "first", lock_ttl=60)
    expire(fake_redis, "k")
    assert idempotency.claim("k", "second", lock_ttl=60) is idempotency.Claim.CLAIMED
    # The first one fails and gives its claim back: compare-and-delete leaves the second delivery's claim alone.
    assert idempotency.release("k", "first") is False
    assert idempotency.claim("k", "third", lock_ttl=60) is idempotency.Claim.BUSY


def test_a_stale_release_leaves_done(fake_redis: fakeredis.FakeRedis) -> None:
    idempotency.claim("k", "first", lock_ttl=60)
    expire(fake_redis, "k")
    idempotency.claim("k", "second", lock_ttl=60)
    idempotency.mark_done("k", "second")
    # An unconditional delete here would let a third delivery act again.
    assert idempotency.release("k", "first") is False
    assert idempotency.claim("k", "third", lock_ttl=60) is idempotency.Claim.DONE


def test_mark_done_after_the_claim_expired_still_records_done(fake_redis: fakeredis.FakeRedis) -> None:
    idempotency.claim("k", "first", lock_ttl=60)
    expire(fake_redis, "k")
    assert idempotency.mark_done("k", "first") is False  # reported: the lock TTL was too short for this run
    assert idempotency.claim("k", "second", lock_ttl=60) is idempotency.Claim.DONE


def test_mark_done_rides_out_a_redis_blip(fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    # The effect happened; Redis fails once when it is recorded. Without the retry the claim would stay "running"
    # until its TTL and the redelivery after it would act again.
    failures = iter([redis.ConnectionError("blip")])
    real = fake_redis.evalsha

    def flaky(*args: Any, **kwargs: Any) -> Any:
        exc = next(failures, None)
        if exc:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(fake_redis, "evalsha", flaky)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    idempotency.claim("k", "t1", lock_ttl=60)
    assert idempotency.mark_done("k", "t1", give_up_after=60) is True
    assert idempotency.claim("k", "t2", lock_ttl=60) is idempotency.Claim.DONE


def test_mark_done_gives_up_loudly(
    fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def down(*args: object, **kwargs: object) -> object:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(fake_redis, "evalsha", down)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(redis.ConnectionError):
        idempotency.mark_done("k", "t1", give_up_after=0)
    assert any(record.levelname == "CRITICAL" for record in caplog.records)


def test_the_claim_outlives_the_tasks_own_hard_time_limit(fake_redis: fakeredis.FakeRedis) -> None:
    @app.task(bind=True, time_limit=900, soft_time_limit=800, shared=False)
    def slow(self: Task[Any, Any]) -> int:
        return idempotency.lock_ttl(self)

    # A per-task limit above the project's: the claim must still outlive the run.
    assert slow.apply().get() == 900 + idempotency.LOCK_MARGIN
    # A per-call limit (apply_async(time_limit=...)) reaches the worker in the message: it wins over both.
    slow.push_request(timelimit=[1200, 1100])
    try:
        assert idempotency.lock_ttl(slow) == 1200 + idempotency.LOCK_MARGIN
    finally:
        slow.pop_request()
    assert idempotency.lock_ttl(send_receipt) == settings.task_time_limit + idempotency.LOCK_MARGIN
    assert send_receipt.apply(args=("o-ttl",)).get() == "sent"
    ttl_key = redis_store.key("idempotency", "send_receipt:o-ttl")
    # "done" keeps the long TTL, not the claim's.
    assert settings.idempotency_ttl - 5 <= fake_redis.ttl(ttl_key) <= settings.idempotency_ttl


def test_send_receipt_acts_once_and_waits_for_a_busy_claim(fake_redis: fakeredis.FakeRedis) -> None:
    assert send_receipt.apply(args=("o-1",)).get() == "sent"
    assert send_receipt.apply(args=("o-1",)).get() == "skipped: already sent"
    assert fake_redis.lrange(redis_store.key("outbox", "receipts"), 0, -1) == ["o-1"]
    # Another delivery holds the claim: this one retries later instead of sending.
    idempotency.claim("send_receipt:o-2", "other", lock_ttl=60)
    with pytest.raises(Retry):
        send_receipt("o-2")
    assert fake_redis.lrange(redis_store.key("outbox", "receipts"), 0, -1) == ["o-1"]


def test_a_failed_send_gives_the_claim_back(fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(order_id: str) -> None:
        raise ConnectionError("mail server down")

    monkeypatch.setattr(notifications, "deliver_receipt", down)
    with pytest.raises(ConnectionError):
        send_receipt("o-3")
    assert idempotency.claim("send_receipt:o-3", "next", lock_ttl=60) is idempotency.Claim.CLAIMED


def test_dead_letter_keeps_what_replay_needs(fake_redis: fakeredis.FakeRedis) -> None:
    deadletters.record("id-1", "pkg.task", ["a"], {"b": 1}, "ValueError: nope", "line1\nline2", "default")
    [entry] = deadletters.entries()
    assert (entry["id"], entry["task"], entry["args"], entry["kwargs"], entry["reason"]) == (
        "id-1",
        "pkg.task",
        ["a"],
        {"b": 1},
        "ValueError: nope",
    )


def test_a_failed_settlement_is_recorded_once_and_not_lost(fake_redis: fakeredis.FakeRedis) -> None:
    request = SimpleNamespace(id="step-1")
    settlement_failed(request, ValueError("feed down"), None, "b-1")
    settlement_failed(request, ValueError("feed down"), None, "b-1")  # the failed step delivered again
    assert [entry["id"] for entry in deadletters.entries()] == ["settlement-b-1"]
    # An earlier errback claimed it and died before recording: this one records it instead of skipping.
    idempotency.claim("settlement_failed:step-2", "died", lock_ttl=60)
    settlement_failed(SimpleNamespace(id="step-2"), ValueError("feed down"), None, "b-2")
    assert [entry["id"] for entry in deadletters.entries()] == ["settlement-b-1", "settlement-b-2"]


def test_fetch_price_retries_transient_errors_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def flaky(pair: str) -> Decimal:
        calls.append(pair)
        if len(calls) < 3:
            raise prices.PriceFeedUnavailable("503")
        return Decimal("1.10")

    monkeypatch.setattr(prices, "quote", flaky)
    # apply() runs in this process and performs the retries synchronously.
    assert prices.fetch_price.apply(args=("EURUSD",)).get() == "1.10"
    assert len(calls) == 3


def test_fetch_price_does_not_retry_bugs(monkeypatch: pytest.MonkeyPatch, fake_redis: fakeredis.FakeRedis) -> None:
    calls = []

    def broken(pair: str) -> Decimal:
        calls.append(pair)
        raise TypeError("bug")

    monkeypatch.setattr(prices, "quote", broken)
    result = prices.fetch_price.apply(args=("EURUSD",))
    assert result.failed() and len(calls) == 1


def test_convert_order_reports_bad_items_instead_of_raising() -> None:
    assert convert_order("1.10", GOOD) == {"order_id": "o-1", "status": "ok", "amount": "21.99"}
    assert convert_order("1.10", {**GOOD, "amount": "x"})["status"] == "rejected"


def test_summarize_adds_decimals_exactly() -> None:
    outcomes = [
        {"order_id": "a", "status": "ok", "amount": "0.10"},
        {"order_id": "b", "status": "ok", "amount": "0.20"},
        {"order_id": "c", "status": "rejected"},
    ]
    assert summarize(outcomes) == {"accepted": 2, "rejected": ["c"], "total": "0.30"}
