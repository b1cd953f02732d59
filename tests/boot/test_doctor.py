"""Boot tier for `doctor`: a stack of its own per broker (a worker per queue, beat), then one fault at a time (the
faults whose detection does not depend on the broker on the Redis stack only).

Each fault test checks that doctor names exactly that fault as FAIL (no other line FAIL), then undoes it the way an
operator would and waits for doctor to read all OK again. The stack is private to this module: it stops workers,
beat and the broker, which the session's `booted` stack must never see. The progress task is watched from outside
(a separate client process polling the result backend) while it runs.
"""

import os
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from booted import BootedProject, Proc, running_project
from services import wait_until
from template import CHOICES

pytestmark = pytest.mark.boot


@dataclass
class Doctor:
    code: int
    out: str
    err: str
    seconds: float  # wall time of the whole `python -m <pkg>.ops doctor` process

    @property
    def rows(self) -> dict[str, str]:
        """check name -> OK / WARN / FAIL"""
        rows = {}
        for line in self.out.splitlines()[:-1]:
            status, name = line.split()[:2]
            rows[name] = status
        return rows

    def failing(self) -> list[str]:
        return [name for name, status in self.rows.items() if status == "FAIL"]

    def all_ok(self) -> bool:
        return self.code == 0 and set(self.rows.values()) == {"OK"}


def doctor(stack: BootedProject, label: str, env: dict[str, str] | None = None) -> Doctor:
    started = time.monotonic()
    result = stack.module("ops", "doctor", env=env)
    report = Doctor(result.returncode, result.stdout, result.stderr, time.monotonic() - started)
    # Shown with -s (the closing note pastes these).
    print(f"\n--- doctor, {label} (exit {report.code}, {report.seconds:.2f}s wall) ---\n{report.out}{report.err}")
    return report


def healthy_again(stack: BootedProject, label: str, timeout: float = 90) -> Doctor:
    reports: list[Doctor] = []

    def ok() -> bool:
        reports.append(doctor(stack, label))
        return reports[-1].all_ok()

    wait_until(ok, timeout=timeout, what=lambda: f"doctor all OK again; last:\n{reports[-1].out}{reports[-1].err}")
    return reports[-1]


@pytest.fixture(scope="module", params=CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    """The broker (and Redis), one bin/worker per queue, bin/beat."""
    broker = request.param
    name = f"Doctor {broker} {os.environ.get('PYTEST_XDIST_WORKER', '')}".strip()
    with running_project(tmp_path_factory.mktemp(f"doctor-{broker}"), name, broker) as project:
        project.start("beat", [str(project.path / "bin" / "beat")])
        healthy_again(project, "start-up")
        yield project


# Faults whose detection does not go through the broker (beat's lock, task registration, a worker's events flag, the
# result backend): one broker is enough. Both brokers' stacks read all OK (the control replies those checks read come
# through each broker) and fail on their own broker faults: consumers, config, broker stopped.
on_redis_only = pytest.mark.parametrize("stack", ["redis"], indirect=True, ids=lambda broker: f"broker={broker}")


def test_healthy_stack_is_all_ok(stack: BootedProject) -> None:
    report = doctor(stack, "healthy")
    assert report.all_ok(), report.out + report.err
    assert len(report.rows) == 12


def test_a_queues_only_worker_stopped_while_tasks_arrive(stack: BootedProject) -> None:
    queue = stack.queues[1]  # the notifications queue
    stack.proc(f"worker-{queue}").stop()
    try:
        stack.program("send_tasks", "tasks.notifications", "send_receipt", [[[f"stopped-{n}"], {}] for n in range(3)])
        report = doctor(stack, f"worker of {queue!r} stopped, 3 tasks sent")
        assert report.code == 1 and report.failing() == ["consumers"], report.out
        assert f"'{queue}' (3 ready)" in report.out
    finally:
        stack.start_worker(queue).wait_for_log("ready.")
    healthy_again(stack, f"worker of {queue!r} back")


@on_redis_only
def test_beat_stopped(stack: BootedProject) -> None:
    stack.proc("beat").stop()
    try:
        report = doctor(stack, "beat stopped")
        assert report.code == 1 and report.failing() == ["beat"], report.out
        assert "no beat holds the lock" in report.out
    finally:
        stack.start("beat", [str(stack.path / "bin" / "beat")])
    healthy_again(stack, "beat back")


@on_redis_only
def test_a_worker_without_a_task_module_gets_an_unregistered_task(stack: BootedProject) -> None:
    queue = stack.queues[2]  # the catalog imports go there
    app_dir = stack.logs / "partial-app"
    app_dir.mkdir(exist_ok=True)
    # The project's app without one task module, as a deployment built from a branch that lost the import would be.
    (app_dir / "partial_app.py").write_text(
        textwrap.dedent(f"""
            from {stack.package}.celery_app import app

            app.conf.imports = tuple(m for m in app.conf.imports if not m.endswith(".tasks.catalog"))
        """)
    )
    stack.proc(f"worker-{queue}").stop()
    argv = [sys.executable, "-m", "celery", "--app", "partial_app:app", "worker", "--queues", queue]
    argv += ["--hostname", f"{queue}@%h", "--concurrency", "1", "--loglevel", "INFO", "--without-mingle"]
    argv += ["--without-gossip"]
    env = {"PYTHONPATH": str(app_dir), "WORKER_QUEUES": queue, "WORKER_HEARTBEAT_FILE": str(app_dir / "hb")}
    partial: Proc = stack.start("worker-partial", argv, env)
    try:
        partial.wait_for_log("ready.")
        stack.program("send_tasks", "tasks.catalog", "import_catalog", [[["lost"], {"steps": 1, "step_seconds": 0.0}]])
        partial.wait_for_log("recorded as a dead letter")
        report = doctor(stack, "worker without tasks.catalog, import_catalog sent to it")
        assert report.code == 1 and report.failing() == ["registration"], report.out
        assert f"lacks {stack.package}.tasks.catalog.import_catalog" in report.out
    finally:
        partial.stop()
        stack.start_worker(queue).wait_for_log("ready.")
    # The fix doctor prints: the full worker is back; replay what it dead-lettered meanwhile.
    replay = stack.module("ops", "deadletters", "replay", "--all")
    assert replay.returncode == 0, replay.stderr
    healthy_again(stack, "full worker back, dead letters replayed")


@on_redis_only
def test_task_events_turned_on_by_control(stack: BootedProject) -> None:
    celery = [sys.executable, "-m", "celery", "--app", f"{stack.package}.celery_app", "control"]
    assert stack.run(*celery, "enable_events").returncode == 0
    try:
        report = doctor(stack, "after `celery control enable_events`")
        assert report.code == 1 and report.failing() == ["events"], report.out
    finally:
        assert stack.run(*celery, "disable_events").returncode == 0
    healthy_again(stack, "after disable_events")


def test_settings_with_a_broker_timeout_below_max_countdown(stack: BootedProject) -> None:
    """Redis: a visibility timeout shorter than the longest countdown; RabbitMQ: its consumer timeout below a run."""
    setting = "CELERY_CONSUMER_TIMEOUT" if stack.service("rabbitmq") else "CELERY_VISIBILITY_TIMEOUT"
    env_file = stack.path / ".env"
    before = env_file.read_text()
    env_file.write_text(before + f"\n{setting}=60\n")
    try:
        report = doctor(stack, f".env with {setting}=60")
        assert report.code == 1 and report.failing() == ["config"], report.out
        assert f"{setting} 60s is" in report.out
    finally:
        env_file.write_text(before)
    healthy_again(stack, ".env restored")


@on_redis_only
def test_progress_is_seen_from_outside_while_the_task_runs(stack: BootedProject) -> None:
    seen = stack.program(
        "watch_progress", "tasks.catalog", "import_catalog", {"name": "monthly", "steps": 5}, timeout=90
    )
    print(f"\n--- states seen from outside: {seen}")
    percents = [percent for state, percent in seen if state == "PROGRESS"]
    assert len(percents) >= 2 and percents == sorted(percents), seen
    assert seen[-1] == ["SUCCESS", {"name": "monthly", "steps": 5}]


@on_redis_only
def test_doctor_and_ops_active_show_a_running_tasks_progress(stack: BootedProject) -> None:
    # 30 s of work: on a loaded machine `ops active` and a doctor run take seconds each, and both must find the task
    # still running (near its last step the backend already says SUCCESS while the worker still lists it).
    calls = [[["quarterly"], {"steps": 30, "step_seconds": 1.0}]]
    (task_id,) = stack.program("send_tasks", "tasks.catalog", "import_catalog", calls)
    active = lambda: stack.module("ops", "active").stdout  # noqa: E731

    def progress_listed() -> str | None:
        out = active()
        return out if task_id in out and "% quarterly: step" in out else None

    listed = wait_until(progress_listed, timeout=30, what="the import's progress in `ops active`")
    print(f"\n--- ops active ---\n{listed}")
    shown = lambda: "% quarterly: step" in doctor(stack, "catalog import running").out  # noqa: E731
    wait_until(shown, timeout=30, what="the import's progress in doctor's running line")
    # The next tests start from an idle stack.
    idle = lambda: task_id not in active()  # noqa: E731
    wait_until(idle, timeout=60, what="the import to finish")


def test_broker_stopped_fails_fast_with_one_line(stack: BootedProject) -> None:
    broker = stack.service("rabbitmq") or stack.service("redis")
    broker.stop()
    try:
        report = doctor(stack, "broker stopped")
        assert report.code == 1 and report.failing() == ["broker"], report.out + report.err
        assert len(report.rows) == 1 and "unreachable" in report.out
        assert "Traceback" not in report.out + report.err
    finally:
        broker.restart()
    healthy_again(stack, "broker back")
