"""Boot tier: render a project per broker, install it, start real servers and real workers, and run its own suite.

What the generated project's tests/test_integration.py proves against these real servers (routing to each queue's
worker, the chain/group/chord workflow, idempotency under a second delivery, dead-lettering and replay, the health
check and a clean SIGTERM) is not re-tested here: its suite runs per broker below. Here: what it cannot see from
inside (the broker's declared queues) and that the suite passes on every variant.

Needs redis-server (and rabbitmq-server for broker=rabbitmq): skipped with the reason when missing, failed in CI.
"""

import sys

import pytest
import services
from booted import BootedProject

pytestmark = pytest.mark.boot
# The generated suite's live tests that stand for the scenarios this file used to repeat: each must run and pass on
# every variant, so dropping one there reopens the gap here.
COVERED_THERE = (
    "test_integration.py::test_task_runs_on_the_worker_of_its_queue[orders]",
    "test_integration.py::test_task_runs_on_the_worker_of_its_queue[notifications]",
    "test_integration.py::test_task_runs_on_the_worker_of_its_queue[prices]",
    "test_integration.py::test_workflow_summarizes_and_reports_bad_items",
    "test_integration.py::test_idempotent_task_acts_once_when_delivered_twice",
    "test_integration.py::test_bad_payload_is_rejected_recorded_and_not_retried",
    "test_integration.py::test_dead_letter_replay_sends_the_task_again",
    "test_integration.py::test_health_check_follows_the_worker",
)


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


def test_generated_projects_own_tests_pass(booted: BootedProject) -> None:
    # Its conftest starts its own redis-server (and RabbitMQ node), as it does on a developer's machine: sharing ours
    # would let these workers take its tasks.
    env = {"TEST_RUN_DIR": str(booted.logs / "own-tests")}
    # -rA: a PASSED line per test in the summary, to check the ones standing for the scenarios merged there.
    argv = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider"]
    result = booted.run(*argv, env=env, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"generated project's tests: {summary}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary
    passed = {line.split()[1].rsplit("/", 1)[-1] for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    missing = sorted(set(COVERED_THERE) - passed)
    assert not missing, f"not run or not passed in the generated suite: {missing}"
