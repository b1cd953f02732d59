"""Two projects on ONE Redis database, told apart only by CELERY_KEY_PREFIX (each project's default: its package name).

The incident: with kombu's default key layout the queue lists, `unacked`, the `_kombu.binding.*` tables (the
remote-control pidbox among them) and `celery-task-meta-*` carry no prefix, so two projects rendered with different
names take each other's tasks ("Received unregistered task") and obey each other's `control shutdown`. Each project
here runs its own worker; the test counts where every task ran, sends a shutdown broadcast from one project and purges
one project's queue, and lists every key in the database that no project prefix covers.
"""

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import services
from booted import BootedProject, install, project_env, read_answers, uninstall
from services import eventually
from template import render

pytestmark = pytest.mark.boot

SENT = 20  # tasks each project sends to its default queue
PARKED = 5  # tasks each project leaves on its "low" queue, which no worker consumes
UNREGISTERED = "Received unregistered task"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BootedProject, BootedProject, redis.Redis]]:
    """Projects "Iso Alpha" and "Iso Beta" against one redis-server, database 0, each with a worker on "default"."""
    services.require("redis-server")
    work = tmp_path_factory.mktemp("isolation")
    server = services.start_redis(work / "redis")
    projects: list[BootedProject] = []
    try:
        for name in ("Iso Alpha", "Iso Beta"):
            path = render(work / name.split()[1].lower(), {"project_name": name, "queues": "default,low"})
            answers = read_answers(path)
            install(path)
            logs = path.parent / "logs"
            logs.mkdir()
            env = project_env(path, server.url, None)
            env.pop("CELERY_KEY_PREFIX", None)  # each project's own default, as a user renders it
            project = BootedProject(path, answers["__package"], ["default", "low"], env, logs, services=[server])
            projects.append(project)
            project.start_worker("default")
        for project in projects:
            project.proc("worker-default").wait_for_log("ready.")
        yield projects[0], projects[1], redis.Redis.from_url(server.url, decode_responses=True)
    finally:
        for project in projects:
            project.stop_all()
            uninstall(project.path.name)
        server.stop()


def runs(db: redis.Redis, project: BootedProject) -> list[str]:
    """Keys of the record_run tasks that ran on this project's worker (it appends to its own prefixed list)."""
    import json

    return [json.loads(entry)["key"] for entry in db.lrange(f"{project.package}:diagnostics:runs", 0, -1)]


def send(project: BootedProject, queue: str, keys: list[str], priority: int | None = None) -> None:
    project.program("record_runs", [{"key": key, "queue": queue, "priority": priority} for key in keys])


def depth(project: BootedProject, queue: str) -> int:
    """The queue's ready messages as `ops queues` reports them to this project's operator."""
    result = project.module("ops", "queues")
    assert result.returncode == 0, result.stderr
    rows = dict(line.split() for line in result.stdout.splitlines()[1:])
    return int(rows[queue])


def flower_depth(project: BootedProject, queue: str) -> int:
    """The queue's messages as Flower's broker page reads them (its own Redis client, told the prefix by the app)."""
    return project.program("flower_depth", queue)


def test_two_projects_on_one_redis_database_do_not_see_each_other(
    pair: tuple[BootedProject, BootedProject, redis.Redis],
) -> None:
    alpha, beta, db = pair
    figures: dict[str, object] = {}

    # 1. Tasks: each project's 20 run on its own worker, none on the other's.
    sent = {p.package: [f"{p.package}-{i}" for i in range(SENT)] for p in (alpha, beta)}
    for project in (alpha, beta):
        send(project, "default", sent[project.package])

    def settled() -> int:
        return sum(len(runs(db, p)) + p.proc("worker-default").count(UNREGISTERED) for p in (alpha, beta))

    eventually(lambda: settled() >= 2 * SENT, timeout=120)
    for project in (alpha, beta):
        ran = runs(db, project)
        figures[f"{project.package}: own tasks run on own worker"] = f"{len(set(ran) & set(sent[project.package]))}"
        figures[f"{project.package}: '{UNREGISTERED}' in its worker log"] = project.proc("worker-default").count(
            UNREGISTERED
        )

    # 2. `ops purge` of one project's queue leaves the same-named queue of the other untouched.
    for project in (alpha, beta):
        send(project, "low", [f"{project.package}-parked-{i}" for i in range(PARKED)])
    before = {p.package: depth(p, "low") for p in (alpha, beta)}
    flower = {p.package: flower_depth(p, "low") for p in (alpha, beta)}
    purged = alpha.module("ops", "purge", "low", "--yes")
    assert purged.returncode == 0, purged.stderr
    after = {p.package: depth(p, "low") for p in (alpha, beta)}
    figures["ops queues 'low' before purge"] = before
    figures["Flower broker page 'low' before purge"] = flower
    figures[f"{alpha.package} ops purge low"] = purged.stdout.strip()
    figures["ops queues 'low' after purge"] = after
    raw = {p.package: db.llen(f"{p.package}:low") for p in (alpha, beta)}
    figures["LLEN <prefix>:low after purge"] = raw

    # 3. A shutdown broadcast from one project stops its workers only.
    shutdown = alpha.run(
        sys.executable, "-m", "celery", "--app", f"{alpha.package}.celery_app", "control", "shutdown", "--timeout", "5"
    )
    a_worker, b_worker = alpha.proc("worker-default"), beta.proc("worker-default")
    with contextlib.suppress(subprocess.TimeoutExpired):
        a_worker.popen.wait(60)  # the broadcast reached its own project's worker
    time.sleep(3)  # the same broadcast, had it reached the other project, stops its worker within this time
    figures[f"{alpha.package} control shutdown"] = (shutdown.stdout + shutdown.stderr).strip().splitlines()[-1:]
    figures[f"{alpha.package} worker exit code"] = a_worker.popen.poll()
    figures[f"{beta.package} worker still running"] = b_worker.popen.poll() is None
    # ...and the other project's worker still works.
    send(beta, "default", [f"{beta.package}-after-shutdown"])
    figures[f"{beta.package} task after the broadcast ran"] = eventually(
        lambda: f"{beta.package}-after-shutdown" in runs(db, beta), timeout=60
    )

    # 4. Priority tasks (kombu's "<queue>\x06\x16<step>" lists) and remote-control replies write keys of their own.
    for project in (alpha, beta):
        send(project, "default", [f"{project.package}-priority"], priority=9)  # alpha's worker is gone: it stays queued
    figures[f"{beta.package} priority task ran"] = eventually(
        lambda: f"{beta.package}-priority" in runs(db, beta), timeout=60
    )
    for project in (alpha, beta):
        app = f"{project.package}.celery_app"
        ping = project.run(sys.executable, "-m", "celery", "--app", app, "inspect", "ping", "--timeout", "3")
        figures[f"{project.package} inspect ping"] = (ping.stdout + ping.stderr).strip().splitlines()[-1:]
    figures[f"{alpha.package} priority list"] = db.llen(f"{alpha.package}:default\x06\x169")

    # 5. Every key in the shared database sits under one project's prefix.
    stray = sorted(k for k in db.scan_iter() if not k.startswith((f"{alpha.package}:", f"{beta.package}:")))
    figures["keys outside both prefixes"] = f"{len(stray)} {stray[:6]}"
    figures["keys per prefix"] = {p.package: sum(1 for _ in db.scan_iter(f"{p.package}:*")) for p in (alpha, beta)}
    print()
    for name, value in figures.items():
        print(f"  {name}: {value}")

    for project in (alpha, beta):
        assert set(sent[project.package]) <= set(runs(db, project)), f"{project.package}: tasks ran elsewhere"
        assert project.proc("worker-default").count(UNREGISTERED) == 0, project.proc("worker-default").log
    assert before == flower == {alpha.package: PARKED, beta.package: PARKED}
    assert f"purged {PARKED} message(s) from 'low'" in purged.stdout
    assert after == raw == {alpha.package: 0, beta.package: PARKED}
    assert figures[f"{alpha.package} worker exit code"] == 0
    assert figures[f"{beta.package} worker still running"], Path(b_worker.log).read_text()[-2000:]
    assert figures[f"{beta.package} task after the broadcast ran"]
    assert figures[f"{beta.package} priority task ran"]
    assert figures[f"{alpha.package} priority list"] == 1
    assert "1 node online" in str(figures[f"{beta.package} inspect ping"])
    assert stray == []
