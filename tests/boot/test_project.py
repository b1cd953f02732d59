"""Boot tier: render a project per broker, install it, start real servers and real workers, and use it.

Needs redis-server (and rabbitmq-server for broker=rabbitmq): skipped with the reason when missing, failed in CI.
"""

import sys
import uuid

import pytest
import services
from booted import BootedProject
from services import wait_until

pytestmark = pytest.mark.boot
ORDER = {"order_id": "o-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}
NO_EMAIL = {key: value for key, value in ORDER.items() if key != "email"}


def worker_log_has(project: BootedProject, queue: str, text: str) -> bool:
    return text in project.proc(f"worker-{queue}").log.read_text()


def test_each_queue_runs_its_routed_tasks_on_its_own_worker(booted: BootedProject) -> None:
    sent = booted.client(
        f"""
        from {booted.package}.celery_app import app
        from {booted.package}.tasks import notifications, orders, prices

        sent = {{}}
        for task, args in [(orders.process_order, [{ORDER!r}]), (notifications.send_receipt, ["route-1"]),
                           (prices.fetch_price, ["EURUSD"])]:
            result = task.delay(*args)  # no queue given: task_routes decides
            result.get(timeout=30)
            sent[result.id] = app.amqp.router.route({{}}, task.name)["queue"].name
        print(json.dumps(sent))
        """
    )
    assert sorted(set(sent.values())) == sorted(booted.queues), "every queue should have a routed example task"
    for task_id, queue in sent.items():
        wait_until(lambda task_id=task_id, queue=queue: worker_log_has(booted, queue, f"[{task_id}] succeeded"))
        others = [q for q in booted.queues if q != queue and worker_log_has(booted, q, task_id)]
        assert others == [], f"task {task_id} for {queue} also reached {others}"


def test_workflow_chain_group_chord_runs_across_workers(booted: BootedProject) -> None:
    batch = uuid.uuid4().hex[:8]
    summary = booted.client(
        f"""
        from {booted.package}.tasks.workflows import settle
        order = {ORDER!r}
        orders = [order, dict(order, order_id="o-2", amount="5.00"), dict(order, order_id="bad", amount="-1")]
        print(json.dumps(settle("{batch}", orders).get(timeout=60)))
        """
    )
    assert summary["accepted"] == 2 and summary["rejected"] == ["bad"]
    # fetch_price ran on its queue, convert_order/summarize on theirs: the chord crossed workers.
    assert float(summary["total"]) > 0


def test_idempotent_task_acts_once_under_redelivery(booted: BootedProject) -> None:
    """The same message delivered twice (same task id), as Redis/RabbitMQ do after a lost ack."""
    order_id, task_id = f"o-{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    booted.client(
        f"""
        from {booted.package}.tasks.notifications import send_receipt
        for _ in range(2):
            send_receipt.apply_async(args=["{order_id}"], task_id="{task_id}")
        print(json.dumps(None))
        """
    )
    # The outbox is read only once both deliveries have finished: with one task id, a .get() after the second send
    # would return the first run's stored result before the duplicate ran.
    wait_until(lambda: any(worker_log_has(booted, q, f"[{task_id}] succeeded") for q in booted.queues))
    queue = next(q for q in booted.queues if worker_log_has(booted, q, f"[{task_id}] succeeded"))
    wait_until(lambda: booted.proc(f"worker-{queue}").count(f"[{task_id}] succeeded") == 2)
    outbox_count = booted.client(
        f"""
        from {booted.package}.redis_store import client, key
        print(json.dumps(client().lrange(key("outbox", "receipts"), 0, -1).count("{order_id}")))
        """
    )
    assert outbox_count == 1


def test_bad_payload_is_dead_lettered_listed_and_replayable(booted: BootedProject) -> None:
    failed_id = booted.client(
        f"""
        from {booted.package}.tasks.orders import process_order
        # No e-mail address: an entry holding one is stored redacted, and a redacted entry is never replayed.
        result = process_order.delay(dict({NO_EMAIL!r}, amount="-5"))
        try:
            result.get(timeout=30)
        except Exception as exc:
            assert type(exc).__name__ == "InvalidPayload", exc
        print(json.dumps(result.id))
        """
    )
    listing = booted.module("deadletters", "list")
    assert listing.returncode == 0 and failed_id in listing.stdout
    line = next(line for line in listing.stdout.splitlines() if failed_id in line)
    assert "InvalidPayload: invalid Order: amount" in line and "queue=" + booted.queues[0] in line
    replay = booted.module("deadletters", "replay", failed_id)
    assert replay.returncode == 0 and f"replayed {failed_id} as " in replay.stdout
    # The worker is still consuming: a good order goes through.
    assert (
        booted.client(
            f"""
        from {booted.package}.tasks.orders import process_order
        print(json.dumps(process_order.delay({ORDER!r}).get(timeout=30)["status"]))
        """
        )
        == "accepted"
    )


def test_health_check_tracks_a_worker_and_sigterm_is_a_clean_exit(booted: BootedProject) -> None:
    extra = booted.start_worker(booted.queues[0], name="probe")
    extra.wait_for_log("ready.")
    env = {"WORKER_HEARTBEAT_FILE": str(booted.logs / "probe.heartbeat")}
    healthy = booted.module("health", "worker", env=env)
    assert healthy.returncode == 0, healthy.stderr
    assert extra.stop(timeout=30) == 0, "warm shutdown should exit 0"
    stopped = booted.module("health", "worker", env=env)
    assert stopped.returncode == 1 and "no heartbeat file" in stopped.stderr


def test_broker_holds_the_declared_queues(booted: BootedProject) -> None:
    rabbit = booted.service("rabbitmq")
    if rabbit:
        # Quorum queues, each with a "<name>.dead" queue for RabbitMQ's native dead-lettering.
        ctl = services.RABBITMQ_REAL_SCRIPT.with_name("rabbitmqctl")
        listed = booted.run(str(ctl), "list_queues", "name", "type", "--quiet", "--no-table-headers", env=rabbit.env)
        assert listed.returncode == 0, listed.stderr
        types = dict(line.split() for line in listed.stdout.splitlines() if line.strip())
        expected = {name: "quorum" for queue in booted.queues for name in (queue, f"{queue}.dead")}
        assert {name: types.get(name) for name in expected} == expected, types
    else:
        # kombu's Redis transport records each queue's binding to its own direct exchange, under the key prefix.
        bindings = booted.client(
            f"""
            from {booted.package}.redis_store import client
            from {booted.package}.settings import settings
            key = settings.global_keyprefix + "_kombu.binding."
            print(json.dumps({{q: sorted(client().smembers(key + q)) for q in {booted.queues!r}}}))
            """
        )
        for queue in booted.queues:
            assert bindings[queue] == [f"{queue}\x06\x16\x06\x16{queue}"], bindings


def test_generated_projects_own_tests_pass(booted: BootedProject) -> None:
    # Its conftest starts its own redis-server (and RabbitMQ node), as it does on a developer's machine: sharing ours
    # would let these workers take its tasks.
    env = {"TEST_RUN_DIR": str(booted.logs / "own-tests")}
    result = booted.run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", env=env, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"generated project's tests: {summary}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary
