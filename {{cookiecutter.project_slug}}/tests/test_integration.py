"""Live tests: real {% if cookiecutter.broker == "rabbitmq" %}RabbitMQ and {% endif %}redis-server, real workers started by bin/worker, one per queue."""

import re
import time
import uuid

import pytest

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.runtime import deadletters
from {{ cookiecutter.__package }}.runtime.redis_store import client, key
from {{ cookiecutter.__package }}.tasks.notifications import send_receipt
from {{ cookiecutter.__package }}.tasks.orders import process_order
from {{ cookiecutter.__package }}.tasks.prices import fetch_price
from {{ cookiecutter.__package }}.tasks.workflows import settle

pytestmark = pytest.mark.integration
TIMEOUT = 30
GOOD = {"order_id": "o-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}


def wait_for(predicate, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout}s")


def dead_letter(task_id: str) -> dict | None:
    return next((e for e in deadletters.entries() if e["id"] == task_id), None)


@pytest.mark.parametrize(
    ("task", "args"),
    [(process_order, [GOOD]), (send_receipt, ["routing-check"]), (fetch_price, ["EURUSD"])],
    ids=["orders", "notifications", "prices"],
)
def test_task_runs_on_the_worker_of_its_queue(workers, task, args) -> None:
    queue = app.amqp.router.route({}, task.name)["queue"].name
    result = task.apply_async(args=args)
    result.get(timeout=TIMEOUT)

    # The worker consuming that queue logged the run (the log line follows the stored result); no other worker did.
    def ran_on() -> list[str]:
        return [q for q, w in workers.items() if f"[{result.id}] succeeded" in w.log.read_text()]

    assert wait_for(ran_on) == [queue]


def test_bad_payload_is_rejected_recorded_and_not_retried(workers) -> None:
    result = process_order.delay({**GOOD, "amount": "-5"})
    with pytest.raises(Exception, match="invalid Order: amount"):
        result.get(timeout=TIMEOUT)
    entry = wait_for(lambda: dead_letter(result.id))
    assert entry["task"] == process_order.name and entry["reason"].startswith("InvalidPayload")
    assert entry["args"] == [{**GOOD, "amount": "-5", "email": "[redacted]"}]  # personal data is not kept
    # Still consuming after the failure.
    assert process_order.delay(GOOD).get(timeout=TIMEOUT)["status"] == "accepted"


def test_dead_letter_replay_sends_the_task_again(workers) -> None:
    # Without the e-mail address: an entry holding one is redacted, and a redacted entry is not replayed.
    result = process_order.delay({**{k: v for k, v in GOOD.items() if k != "email"}, "currency": "euro"})
    with pytest.raises(Exception, match="currency"):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: dead_letter(result.id))
    new_id = deadletters.replay(app, result.id)
    assert dead_letter(result.id) is None
    # Same bad payload, so it fails again and is recorded again under the new id: nothing is lost.
    assert wait_for(lambda: dead_letter(new_id))["reason"].startswith("InvalidPayload")


def test_idempotent_task_acts_once_when_delivered_twice(workers) -> None:
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    first = send_receipt.delay(order_id).get(timeout=TIMEOUT)
    second = send_receipt.delay(order_id).get(timeout=TIMEOUT)
    assert (first, second) == ("sent", "skipped: already sent")
    assert client().lrange(key("outbox", "receipts"), 0, -1).count(order_id) == 1


def test_workflow_summarizes_and_reports_bad_items(workers) -> None:
    batch = uuid.uuid4().hex[:8]
    orders = [GOOD, {**GOOD, "order_id": "o-2", "amount": "5.00"}, {**GOOD, "order_id": "bad", "amount": "x"}]
    summary = settle(batch, orders).get(timeout=TIMEOUT)
    assert summary["accepted"] == 2 and summary["rejected"] == ["bad"]
    # The receipt is linked to the summary with an immutable signature.
    wait_for(lambda: f"batch-{batch}" in client().lrange(key("outbox", "receipts"), 0, -1))


def test_workflow_failure_runs_the_errback(workers) -> None:
    batch = uuid.uuid4().hex[:8]
    # A header task raises: the chord fails as a whole. (A bad payload on purpose: not the dict settle() expects.)
    result = settle(batch, ["not-an-order"])  # type: ignore[list-item]
    with pytest.raises(Exception):  # noqa: B017
        result.get(timeout=TIMEOUT)
    entry = wait_for(lambda: dead_letter(f"settlement-{batch}"))
    assert entry["task"] == "settlement"


def test_health_check_follows_the_worker(own_worker) -> None:
    check = own_worker.health()
    assert check.returncode == 0, check.stderr
    # A worker that stops removes its heartbeat: the check fails at once, with a reason.
    assert own_worker.stop() == 0
    check = own_worker.health()
    assert check.returncode == 1 and "no heartbeat file" in check.stderr


def test_beat_fires_an_entry_onto_its_queue(workers, tmp_path) -> None:
    """Real beat (bin/beat, RedBeat) with a 1 s interval: the price refresh reaches the worker of its queue."""
    import os
    import signal
    import subprocess
    import sys

    from {{ cookiecutter.__package }}.config.schedule import ENTRIES

    entry = next(e for e in ENTRIES if e.name == "refresh-eurusd")
    log = tmp_path / "beat.log"
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "CELERY_PRICE_REFRESH_SECONDS": "1",
        "CELERY_BEAT_MAX_LOOP_INTERVAL": "1",
        "CELERY_REDBEAT_LOCK_TIMEOUT": "5",
    }

    def runs() -> int:
        # Celery's own "Task <name>[<id>] succeeded in" line, one per completed run.
        return len(re.findall(r"fetch_price\[[^\]]+\] succeeded in", workers[entry.queue].log.read_text()))

    before = runs()
    with log.open("wb") as out:
        beat = subprocess.Popen(["bin/beat"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: runs() >= before + 3)
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        assert beat.wait(30) == 0, log.read_text()
    assert log.read_text().count("Sending due task refresh-eurusd") >= 3
