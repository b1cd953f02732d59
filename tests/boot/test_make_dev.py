"""`make dev` in a fresh render against a Redis the user already runs (REDIS_URL set), as the Makefile promises.

The incident: with REDIS_URL set, dev starts no Redis, so nothing created `.run/` and writing `.run/dev.env` failed
(FileNotFoundError) before any worker started. Here: a fresh render, a real redis-server started by the harness,
`make dev` in its own process group (the project is already installed into this environment, so make's `install`
prerequisite is skipped with `-o install`), then a task on each queue must run on that queue's worker.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import services
from booted import install, project_env, read_answers, uninstall
from services import log_tail, process_family, wait_until
from template import render

pytestmark = pytest.mark.boot


def test_make_dev_uses_the_redis_in_redis_url(tmp_path: Path) -> None:
    services.require("redis-server")
    services.require("make")
    path = render(tmp_path, {"project_name": "Dev Existing"})
    answers = read_answers(path)
    queues = answers["queues"].split(",")
    assert not (path / ".run").exists()  # fresh: nothing has created it yet
    install(path)
    server = services.start_redis(tmp_path / "redis")
    env = project_env(path, server.url, None)
    log = tmp_path / "make-dev.log"
    family: set[int] = set()
    make = None
    try:
        with log.open("wb") as out:
            make = subprocess.Popen(
                ["make", "-o", "install", "dev", f"VENV={Path(sys.executable).parent.parent}"],
                cwd=path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: "Running." in log.read_text() or make.poll() is not None,
            60,
            lambda: f"make dev (exit {make.poll()}):\n{log_tail(log)}",
        )
        assert "Running." in log.read_text(), f"make dev (exit {make.poll()}):\n{log_tail(log)}"
        family = process_family(make.pid)
        assert "redis " not in log.read_text(), "dev started a Redis of its own although REDIS_URL is set"
        program = f"""
from devtools.diagnostics import record_run
for queue in {queues!r}:
    print(queue, record_run.apply_async(args=["dev-" + queue], queue=queue).get(timeout=90), flush=True)
"""
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", program], cwd=path, env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, f"{result.stderr}\nmake dev log:\n{log_tail(log)}"
        print(f"\nmake dev with REDIS_URL set: a task on each of {queues} done in {time.monotonic() - started:.1f}s")
        for queue in queues:
            worker_log = (path / ".run" / f"worker-{queue}.log").read_text()
            assert f"dev-{queue}" in worker_log, (
                f"task for {queue} did not run on worker-{queue}:\n{worker_log[-2000:]}"
            )
            for other in set(queues) - {queue}:
                assert f"dev-{other}" not in worker_log, f"task for {other} ran on worker-{queue}"
        # Ctrl-C's path: the whole group (make and dev.py) gets the signal; dev.py stops workers and beat.
        os.killpg(make.pid, signal.SIGINT)
        make.wait(90)
        print(log_tail(log, 5))
        assert services._wait_gone(family, 30) == set(), "workers or beat outlived make dev"
        assert not (path / ".run" / "dev.env").exists()
    finally:
        if make is not None:  # whatever is left of make dev's processes, when the test failed half-way
            services.stop_group(make, signal.SIGKILL, 10, also=family)
        server.stop()
        uninstall(answers["project_slug"])
