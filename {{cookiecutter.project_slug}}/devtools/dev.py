"""`make dev`: local Redis{% if cookiecutter.broker == "rabbitmq" %} and RabbitMQ{% endif %} when none is configured, one worker per queue, and beat. Ctrl-C stops all.

Runs before settings can be loaded (REDIS_URL may not exist yet), so it reads `.env` itself.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dotenv import dotenv_values

from . import devservers

PROJECT = Path(__file__).resolve().parent.parent
RUN_DIR = PROJECT / ".run"  # data and logs of the local servers; delete it to start from scratch
# The URLs of the servers started here, for other commands run in this directory while `make dev` runs (settings.py
# reads it after .env): `python -m <package>.ops deadletters list` in a second terminal talks to this stack.
DEV_ENV = RUN_DIR / "dev.env"
# settings.py's default queues (CELERY_QUEUES in the environment or .env replaces them, for the workers too).
DEFAULT_QUEUES = [
{%- for queue in cookiecutter.__queues.split(',') %}
    "{{ queue }}",
{%- endfor %}
]


def _env() -> dict[str, str]:
    # Real environment variables win over .env, as in settings.py.
    env = {**{k: v for k, v in dotenv_values(PROJECT / ".env").items() if v is not None}, **os.environ}
    # bin/worker runs `celery` from PATH: make it this interpreter's (the virtualenv's) celery.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _port(preferred: int) -> int:
    return preferred if devservers.port_is_free(preferred) else devservers.free_port()


def start_servers(env: dict[str, str]) -> list[devservers.Server]:
    servers = []
    if not env.get("REDIS_URL"):
        redis = devservers.start_redis(RUN_DIR / "redis", _port(6379), env.get("REDIS_PASSWORD"))
        env["REDIS_URL"] = redis.url
        servers.append(redis)
{%- if cookiecutter.broker == "rabbitmq" %}
    if not env.get("CELERY_BROKER_URL"):
        rabbit = devservers.start_rabbitmq(
            RUN_DIR / "rabbitmq",
            _port(5672),
            "{{ cookiecutter.__package }}",
            env.get("RABBITMQ_PASSWORD", "guest"),
        )
        env["CELERY_BROKER_URL"] = rabbit.url
        servers.append(rabbit)
{%- endif %}
    return servers


def _start(name: str, script: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = RUN_DIR / f"{name}.log"
    print(f"  {name:<22} bin/{script:<7} log={log.relative_to(PROJECT)}")
    # Output to a file per process: several interleaved Celery logs on one terminal are unreadable.
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(PROJECT / "bin" / script)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_processes(env: dict[str, str]) -> dict[str, subprocess.Popen[bytes]]:
    """One worker per queue (the production layout, so routing problems show up here too), and beat."""
    queues = [q.strip() for q in env["CELERY_QUEUES"].split(",")] if "CELERY_QUEUES" in env else DEFAULT_QUEUES
    procs = {}
    for queue in queues:
        procs[f"worker-{queue}"] = _start(f"worker-{queue}", "worker", {**env, "WORKER_QUEUES": queue})
    procs["beat"] = _start("beat", "beat", env)
    return procs


def stop_processes(procs: dict[str, subprocess.Popen[bytes]], timeout: float = 60) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish
    deadline = time.monotonic() + timeout
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Here, not only where a server starts: with REDIS_URL set no server starts, and dev.env and the logs go here too.
    RUN_DIR.mkdir(exist_ok=True)
    env = _env()
    servers = start_servers(env)
    for server in servers:
        print(f"  {server.name:<7} {server.url.split('@')[-1]}  log={server.log.relative_to(PROJECT)}")
    DEV_ENV.write_text("".join(f"{name}={env[name]}\n" for name in ("REDIS_URL", "CELERY_BROKER_URL") if name in env))
    procs = start_processes(env)
    # SIGTERM (e.g. from a supervisor of this script) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    print("Running. Ctrl-C stops everything.")
    try:
        while all(proc.poll() is None for proc in procs.values()):
            time.sleep(0.5)
        failed = [name for name, proc in procs.items() if proc.poll() is not None]
        print(f"{', '.join(failed)} exited; see the logs in {RUN_DIR}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping workers and beat (warm shutdown), then servers ...")
        return 0
    finally:
        stop_processes(procs)
        DEV_ENV.unlink(missing_ok=True)
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
