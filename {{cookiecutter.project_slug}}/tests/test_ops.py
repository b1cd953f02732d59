"""The ops command line: answers and refusals without a broker (fakes), then `ops workers` against real workers."""

import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.config.settings import settings
from {{ cookiecutter.__package }}.ops import cli as ops
from {{ cookiecutter.__package }}.runtime import deadletters

PROJECT = Path(__file__).resolve().parent.parent
QUEUE = settings.queues[-1]


class FakeInspect:
    """app.control.inspect() as seen by ops: method name -> replies (None: nobody answered)."""

    def __init__(self, **replies: Any) -> None:
        self.replies = replies

    def __getattr__(self, method: str) -> Any:
        return lambda: self.replies.get(method)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """No broker: the reachability check passes, purges are recorded instead of sent."""
    purged: dict[str, list] = {"queues": []}
    monkeypatch.setattr(ops, "_check_broker", lambda app: None)
    monkeypatch.setattr(ops, "queue_depths", lambda app, names=None: {name: 5 for name in names or settings.queues})

    def purge(app: object, name: str) -> int:
        purged["queues"].append(name)
        return 5

    monkeypatch.setattr(ops, "purge_queue", purge)
    return purged


def test_queues_prints_each_declared_queue_with_its_depth(offline: dict, capsys: pytest.CaptureFixture) -> None:
    assert ops.main(app, ["queues"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["queue", "ready"] and rows[1:] == [[name, "5"] for name in settings.queues]


def test_workers_without_replies_is_a_one_line_problem(
    offline: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(app.control, "inspect", lambda **_: FakeInspect())
    assert ops.main(app, ["workers", "--timeout", "0.5"]) == 1
    assert capsys.readouterr().err.startswith("error: no workers replied within 0.5s")


def test_workers_prints_a_stats_line_per_worker(
    offline: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    stats = {
        "pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 2},
        "prefetch_count": 8,
        "total": {"a": 3, "b": 4},
        "uptime": 12,
    }
    fake = FakeInspect(ping={"w1@h": {"ok": "pong"}}, stats={"w1@h": stats})
    monkeypatch.setattr(app.control, "inspect", lambda **_: fake)
    assert ops.main(app, ["workers"]) == 0
    assert capsys.readouterr().out.strip() == "w1@h  ok  pool=prefork concurrency=2 prefetch=8 processed=7 uptime=12s"


def test_purge_refuses_an_undeclared_queue(offline: dict, capsys: pytest.CaptureFixture) -> None:
    assert ops.main(app, ["purge", "no-such-queue", "--yes"]) == 1
    assert "'no-such-queue' is not a declared queue" in capsys.readouterr().err
    assert offline["queues"] == []


@pytest.mark.parametrize("answer", ["wrong", EOFError])
def test_purge_needs_the_queue_name_typed(
    answer: object, offline: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def typed(prompt: str) -> str:
        if answer is EOFError:
            raise EOFError
        return str(answer)

    monkeypatch.setattr("builtins.input", typed)
    assert ops.main(app, ["purge", QUEUE]) == 1
    assert "not confirmed; nothing purged" in capsys.readouterr().err
    assert offline["queues"] == []


def test_purge_confirmed_reports_what_it_removed(
    offline: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("builtins.input", lambda prompt: QUEUE)
    assert ops.main(app, ["purge", QUEUE]) == 0
    assert ops.main(app, ["purge", QUEUE, "--yes"]) == 0
    assert offline["queues"] == [QUEUE, QUEUE]
    assert capsys.readouterr().out.endswith(f"purged 5 message(s) from {QUEUE!r}\n")


def test_unreachable_broker_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def refuse(app: object) -> None:
        raise ConnectionRefusedError("Connection refused")

    monkeypatch.setattr(ops, "connect", refuse)
    assert ops.main(app, ["active"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the broker at ") and "Connection refused" in err


def test_deadletters_subcommands_reach_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.setattr(deadletters, "migrate_legacy", lambda: None)

    def replay_all(app: object) -> int:
        seen.append(app)
        return 0

    monkeypatch.setattr(deadletters, "replay_all", replay_all)
    assert ops.main(app, ["deadletters", "replay", "--all"]) == 0
    assert seen == [app]


def test_a_usage_error_names_what_is_missing(capsys: pytest.CaptureFixture) -> None:
    assert ops.main(app, ["deadletters", "replay"]) == 2
    assert "replay needs a TASK_ID" in capsys.readouterr().err


def test_ops_runs_from_the_checkout_and_is_no_celery_plugin() -> None:
    # A celery.commands plugin would be imported by every `celery` run in the environment, whichever project it is for.
    name = "{{ cookiecutter.project_slug }}"
    ours = [dist for dist in distributions() if dist.metadata["Name"] == name]
    assert all(entry.group != "celery.commands" for dist in ours for entry in dist.entry_points)
    argv = [sys.executable, "-m", "{{ cookiecutter.__package }}.ops", "--help"]
    shown = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert {"doctor", "deadletters", "beat", "queues", "workers"} <= set(shown.stdout.split()), shown.stdout


@pytest.mark.integration
def test_workers_and_registered_against_the_running_workers(workers) -> None:
    def ops_cli(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "{{ cookiecutter.__package }}.ops", *args]
        return subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, check=False)

    listing = ops_cli("workers", "--timeout", "3")
    assert listing.returncode == 0, listing.stderr
    for worker in workers.values():
        line = next(line for line in listing.stdout.splitlines() if line.startswith(worker.env["WORKER_NAME"] + "@"))
        assert " ok  pool=prefork concurrency=1 " in line
    registered = ops_cli("registered", "--timeout", "3")
    assert registered.returncode == 0 and ".tasks.orders.process_order" in registered.stdout
