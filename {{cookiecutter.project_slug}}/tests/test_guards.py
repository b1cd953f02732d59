"""Guards (base.py) in isolation: the payload size limit, and refused messages recorded as dead letters."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from celery.exceptions import InvalidTaskError
from kombu.exceptions import ContentDisallowed

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.config.settings import settings
from {{ cookiecutter.__package }}.runtime import deadletters, signals
from {{ cookiecutter.__package }}.tasks import base
from {{ cookiecutter.__package }}.tasks.orders import process_order
from {{ cookiecutter.__package }}.tasks.prices import fetch_price


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(settings, "max_payload_bytes", 100)
    return 100


def message(body: bytes = b"[[], {}, {}]", headers: dict | None = None, decoded: Any = None) -> SimpleNamespace:
    """The parts of a kombu Message the guards read."""
    return SimpleNamespace(
        body=body,
        headers=headers,
        delivery_info={"routing_key": "{{ cookiecutter.__default_queue }}"},
        delivery_tag="tag-1",
        decode=lambda: decoded,
    )


def test_an_oversized_payload_is_refused_before_publishing(small_limit: int) -> None:
    # Raised before any broker connection: nothing is sent.
    with pytest.raises(base.PayloadTooLarge, match=r"over the 100-byte limit \(CELERY_MAX_PAYLOAD_BYTES\)"):
        process_order.apply_async(args=[{"order_id": "x" * 200}])


def test_a_payload_at_the_limit_passes() -> None:
    base.check_payload_size("some.task", settings.max_payload_bytes)


def test_the_worker_refuses_an_oversized_message_the_way_celery_refuses_invalid_ones(small_limit: int) -> None:
    # An InvalidTaskError from the request constructor makes Celery's consumer log, reject and send task_rejected.
    assert issubclass(base.PayloadTooLarge, InvalidTaskError)
    with pytest.raises(base.PayloadTooLarge, match=r"some\.task message is 101 bytes"):
        base.GuardedRequest(message(b"x" * 101, {"id": "id-1", "task": "some.task"}))


def test_every_task_is_guarded() -> None:
    app.loader.import_default_modules()
    ours = [task for name, task in app.tasks.items() if name.startswith("{{ cookiecutter.__package }}.")]
    assert ours
    for task in ours:
        assert isinstance(task, base.GuardedTask) and task.Request is base.GuardedRequest, task.name


def test_a_refused_message_becomes_a_dead_letter_without_its_arguments(fake_redis: fakeredis.FakeRedis) -> None:
    exc = ContentDisallowed("Refusing to deserialize untrusted content of type pickle")
    signals.record_rejected(message=message(headers={"id": "id-1", "task": "some.task"}), exc=exc)
    [entry] = deadletters.entries()
    assert (entry["id"], entry["task"], entry["args"], entry["queue"]) == (
        "id-1",
        "some.task",
        [],
        "{{ cookiecutter.__default_queue }}",
    )
    assert entry["reason"].startswith("ContentDisallowed: Refusing to deserialize untrusted content of type pickle")


def test_a_message_that_is_not_a_task_message_is_recorded_too(fake_redis: fakeredis.FakeRedis) -> None:
    signals.record_rejected(message=message(headers=None), exc=None)
    [entry] = deadletters.entries()
    assert entry["id"] == "no-id-tag-1" and entry["reason"].startswith("InvalidTaskError: not a Celery task message")


def test_an_unknown_task_keeps_its_arguments_for_replay(fake_redis: fakeredis.FakeRedis) -> None:
    signals.record_unknown(message=message(decoded=(["a"], {"b": 1}, {})), name="not.deployed.yet", id="id-2")
    [entry] = deadletters.entries()
    assert (entry["id"], entry["task"], entry["args"], entry["kwargs"]) == ("id-2", "not.deployed.yet", ["a"], {"b": 1})
    assert entry["reason"].startswith("NotRegistered: no task named 'not.deployed.yet'")


@pytest.mark.parametrize(
    "when",
    [
        {"countdown": 30 * 86_400},
        {"eta": datetime.now(UTC) + timedelta(days=30)},
        {"eta": datetime.now(UTC).replace(tzinfo=None) + timedelta(days=30)},  # naive: read as UTC, as Celery does
        {"eta": (datetime.now(UTC) + timedelta(days=30)).isoformat()},
    ],
    ids=["countdown", "eta", "naive-eta", "iso-eta"],
)
def test_a_countdown_beyond_the_limit_is_refused_before_publishing(when: dict) -> None:
    # Raised before any broker connection: nothing is sent.
    limit = rf"over the {settings.max_countdown}s limit \(CELERY_MAX_COUNTDOWN\)"
    with pytest.raises(base.CountdownTooLong, match=limit):
        process_order.apply_async(args=[{"order_id": "o-1"}], **when)


def test_a_countdown_at_the_limit_passes() -> None:
    base.check_countdown("some.task", countdown=settings.max_countdown)
    base.check_countdown("some.task", eta=datetime.now(UTC) + timedelta(seconds=settings.max_countdown - 5))


def test_both_countdown_and_eta_are_checked() -> None:
    # Celery takes the message's ETA from the countdown when both are given: a far countdown must not hide behind a
    # near ETA (nor the reverse: RabbitMQ's delay follows the ETA).
    near = datetime.now(UTC) + timedelta(seconds=10)
    with pytest.raises(base.CountdownTooLong):
        process_order.apply_async(args=[{"order_id": "o-1"}], countdown=30 * 86_400, eta=near)
    with pytest.raises(base.CountdownTooLong):
        process_order.apply_async(args=[{"order_id": "o-1"}], countdown=10, eta=near + timedelta(days=30))


def test_a_far_countdown_in_a_chain_step_is_refused_before_publishing() -> None:
    step = process_order.si({"order_id": "o-2"}).set(countdown=30 * 86_400)
    with pytest.raises(base.CountdownTooLong, match="CELERY_MAX_COUNTDOWN"):
        (process_order.si({"order_id": "o-1"}) | step).apply_async()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"countdown": 0.3}, {"countdown": 1}),
        ({"countdown": 0}, {"countdown": 0}),  # due now: no delay at all
        ({"countdown": 5}, {"countdown": 5}),
        ({"eta": "in 0.5s"}, {"countdown": 1.0, "eta": None}),
        ({"eta": "in 1.5s"}, {"countdown": 1.5, "eta": None}),  # Celery computes from it a moment later: under 1.5
    ],
    ids=["countdown-0.3", "countdown-0", "countdown-5", "eta-0.5s", "eta-1.5s"],
)
def test_delays_under_a_second_are_rounded_up(given: dict, expected: dict) -> None:
    # kombu's native delayed delivery raises ValueError for int(countdown) == 0 (inside retry: the message is lost).
    options = dict(given)
    if "eta" in options:
        options["eta"] = datetime.now(UTC) + timedelta(seconds=float(options["eta"].split()[1][:-1]))
    base.round_up_short_delays(options)
    assert {name: options.get(name) for name in expected} == pytest.approx(expected, abs=0.05)


def test_a_sub_second_countdown_reaches_the_broker_as_a_whole_second(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict = {}
    monkeypatch.setattr(
        "celery.app.task.Task.apply_async", lambda self, args=None, kwargs=None, **options: sent.update(options)
    )
    process_order.apply_async(args=[{"order_id": "o-1"}], countdown=0.2)
    assert sent["countdown"] == 1


def test_retry_without_a_countdown_checks_the_default_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery falls back to default_retry_delay inside retry(); the check must see it, not None.
    monkeypatch.setattr(fetch_price, "default_retry_delay", settings.max_countdown + 1)
    with pytest.raises(base.CountdownTooLong, match="CELERY_MAX_COUNTDOWN"):
        fetch_price.retry()


@pytest.mark.parametrize("attribute", ["default_retry_delay", "retry_backoff_max"])
def test_a_task_with_a_retry_delay_beyond_the_limit_is_refused_when_defined(attribute: str) -> None:
    with pytest.raises(base.CountdownTooLong, match=rf"{attribute}=\d+ is over the .*CELERY_MAX_COUNTDOWN"):
        options: dict[str, Any] = {attribute: settings.max_countdown + 1}

        @app.task(shared=False, lazy=False, **options)
        def too_patient() -> None: ...


def test_every_tasks_retry_delays_fit_the_limit() -> None:
    app.loader.import_default_modules()
    for name, task in app.tasks.items():
        if name.startswith("{{ cookiecutter.__package }}."):
            assert task.default_retry_delay <= settings.max_countdown, name
            assert getattr(task, "retry_backoff_max", 0) <= settings.max_countdown, name  # set by autoretry


def test_the_worker_refuses_a_message_with_an_eta_beyond_the_limit() -> None:
    # send_task by name bypasses apply_async: the worker refuses it, and task_rejected makes it a dead letter.
    far = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    assert issubclass(base.EtaTooFar, InvalidTaskError)
    with pytest.raises(base.EtaTooFar, match=r"some\.task is scheduled \d+s ahead, over the"):
        base.GuardedRequest(message(headers={"id": "id-1", "task": "some.task", "eta": far}))


def test_a_retry_beyond_the_limit_is_refused() -> None:
    # Refused before Celery publishes the retry (an error there would drop the message without a dead letter).
    with pytest.raises(base.CountdownTooLong, match="CELERY_MAX_COUNTDOWN"):
        fetch_price.retry(countdown=settings.max_countdown + 1)
