"""Boot tier: render a project per broker, install it, start real servers and real workers.

What the generated project's tests/test_integration.py proves against real servers (routing to each queue's worker,
the chain/group/chord workflow, idempotency under a second delivery, dead-lettering and replay, the health check and a
clean SIGTERM) is not re-tested here: tests/boot/test_ci_workflow.py runs that suite per broker, as the project's CI
workflow runs it. Here: what it cannot see from inside (the broker's declared queues).

Needs redis-server (and rabbitmq-server for broker=rabbitmq): skipped with the reason when missing, failed in CI.
"""

import pytest
import services
from booted import BootedProject

pytestmark = pytest.mark.boot


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
        bindings = booted.program("redis_bindings", booted.queues)
        for queue in booted.queues:
            assert bindings[queue] == [f"{queue}\x06\x16\x06\x16{queue}"], bindings
