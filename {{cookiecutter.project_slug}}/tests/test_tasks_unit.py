"""Task logic in isolation (fakeredis, direct calls): fast checks of the patterns. Integration tests prove them live."""

from collections.abc import Iterator
from decimal import Decimal

import fakeredis
import pytest

from {{ cookiecutter.__package }} import deadletters, idempotency, redis_store
from {{ cookiecutter.__package }}.payloads import InvalidPayload, Order, parse
from {{ cookiecutter.__package }}.tasks import prices
from {{ cookiecutter.__package }}.tasks.workflows import convert_order, summarize

GOOD = {"order_id": "o-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeRedis]:
    fake = fakeredis.FakeRedis(decode_responses=True)
    monkeypatch.setattr(redis_store, "client", lambda: fake)
    monkeypatch.setattr(idempotency, "client", lambda: fake)
    monkeypatch.setattr(deadletters, "client", lambda: fake)
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
    assert idempotency.claim("k", lock_ttl=60) is idempotency.Claim.CLAIMED
    assert idempotency.claim("k", lock_ttl=60) is idempotency.Claim.BUSY
    idempotency.mark_done("k")
    assert idempotency.claim("k", lock_ttl=60) is idempotency.Claim.DONE


def test_released_claim_can_be_taken_again(fake_redis: fakeredis.FakeRedis) -> None:
    idempotency.claim("k", lock_ttl=60)
    idempotency.release("k")
    assert idempotency.claim("k", lock_ttl=60) is idempotency.Claim.CLAIMED


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


def test_fetch_price_retries_transient_errors_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def flaky(pair: str) -> Decimal:
        calls.append(pair)
        if len(calls) < 3:
            raise prices.PriceFeedUnavailable("503")
        return Decimal("1.10")

    monkeypatch.setattr(prices, "quote", flaky)
    # apply() runs in this process and performs the retries synchronously.
    assert prices.fetch_price.apply(args=["EURUSD"]).get() == "1.10"
    assert len(calls) == 3


def test_fetch_price_does_not_retry_bugs(monkeypatch: pytest.MonkeyPatch, fake_redis: fakeredis.FakeRedis) -> None:
    calls = []

    def broken(pair: str) -> Decimal:
        calls.append(pair)
        raise TypeError("bug")

    monkeypatch.setattr(prices, "quote", broken)
    result = prices.fetch_price.apply(args=["EURUSD"])
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
