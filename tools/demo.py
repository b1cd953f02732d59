"""`make demo`: render a project, start it the way `make dev` does (a local Redis and one worker per queue), send a
task to every queue, show which worker ran each, then stop everything cleanly.

Extra cookiecutter answers can be passed as arguments: `make demo ARGS="broker=rabbitmq queues=default,emails"`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))
from template import render  # noqa: E402  (the rendering the tests use)

BUILD = ROOT / "build" / "demo"
# Run inside the project directory as a producer would; settings find the dev servers through .run/dev.env.
CLIENT = """
import json
from {pkg}.celery_app import app
from {pkg}.tasks import notifications, orders, prices

order = {{"order_id": "demo-1", "amount": "19.99", "currency": "EUR", "email": "demo@example.com"}}
rows = []
for task, args in [(orders.process_order, [order]), (notifications.send_receipt, ["demo-1"]),
                   (prices.fetch_price, ["EURUSD"])]:
    result = task.delay(*args)
    queue = app.amqp.router.route({{}}, task.name)["queue"].name
    rows.append({{"task": task.name.split(".tasks.")[1], "id": result.id, "queue": queue,
                 "result": result.get(timeout=30)}})
print(json.dumps(rows))
"""


def wait_for(path: Path, text: str, dev: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if dev.poll() is not None:
            raise SystemExit(f"the dev runner exited with {dev.returncode}; see {path}")
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {text!r} in {path}")


def worker_that_ran(run_dir: Path, task_id: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the log line follows the stored result by a few milliseconds
        for log in sorted(run_dir.glob("worker-*.log")):
            if f"[{task_id}] succeeded" in log.read_text(errors="replace"):
                return log.stem
        time.sleep(0.1)
    return "?"


def main(argv: list[str]) -> int:
    answers = dict(arg.split("=", 1) for arg in argv)
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    project = render(BUILD, answers)
    recorded = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    pkg, queues = recorded["__package"], recorded["__queues"].split(",")
    where = project.relative_to(ROOT)
    print(f"rendered {where}  (broker={recorded['broker']}, queues={','.join(queues)})")
    # Editable, without dependencies: they are in this environment already, from the lock (tools/bootstrap.sh). uv
    # builds it with the project's own backend (uv_build), offline.
    uv = [str(Path(sys.executable).parent / "uv"), "pip", "install", "--quiet", "--offline", "--no-deps"]
    subprocess.run([*uv, "--python", sys.executable, "-e", str(project)], check=True)

    # bin/worker runs `celery` from PATH: this environment's. Servers come from the dev runner, not the caller's env.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    print("starting `python -m devtools.dev` (what `make dev` runs):")
    dev = subprocess.Popen([sys.executable, "-m", "devtools.dev"], cwd=project, env=env, start_new_session=True)
    try:
        for queue in queues:
            wait_for(project / ".run" / f"worker-{queue}.log", "ready.", dev)
        client = subprocess.run(
            [sys.executable, "-c", CLIENT.format(pkg=pkg)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if client.returncode != 0:
            print(client.stderr, file=sys.stderr)
            return 1
        print(f"\n{'task':<30} {'routed to':<10} {'ran on':<16} result")
        for row in json.loads(client.stdout.strip().splitlines()[-1]):
            ran_on = worker_that_ran(project / ".run", row["id"])
            print(f"{row['task']:<30} {row['queue']:<10} {ran_on:<16} {row['result']}")
        print(f"\nLogs are in {where}/.run/. To keep the stack running: cd {where} && make dev")
        return 0
    finally:
        os.killpg(dev.pid, signal.SIGINT)  # the same clean stop as Ctrl-C
        dev.wait(120)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
