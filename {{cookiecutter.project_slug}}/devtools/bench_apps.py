"""What `bench.py` runs: the setups it compares, their Celery apps and bench tasks, the publisher, the workers.

A process holds one app (BENCH_PROFILE), so the project's signal handlers reach only the generated app's processes:
generated = the project's own app (celery_app.py and all it loads), unchanged; stock = Celery with only broker_url;
django = the Celery settings and LOGGING cookiecutter-django generates. BENCH_CONF (JSON) overrides single settings.
The bench tasks are registered on the app here under "bench.*" names, never in the project's task modules; on the
generated app they go to the default queue.
"""

import argparse
import json
import logging.config
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import redis
from celery import Celery

COUNTER = "bench:done"
LATENCIES = "bench:latency"
BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent
# bin/worker's flags: what the generated project runs.
WORKER_FLAGS = ("--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", "--without-mingle", "--without-gossip")


@cache
def _redis() -> redis.Redis:
    # One client per process; redis-py opens a new connection after a fork, so pool processes get their own.
    return redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


def _django_app(url: str) -> Celery[Any]:
    app = Celery("bench_django", broker=url)
    app.conf.update(result_backend=url, result_extended=True, result_backend_always_retry=True)
    app.conf.update(result_backend_max_retries=10, accept_content=["json"], task_serializer="json")
    app.conf.update(result_serializer="json", task_time_limit=300, task_soft_time_limit=60)
    app.conf.update(worker_send_task_events=True, task_send_sent_event=True, worker_hijack_root_logger=False)
    app.conf.update(broker_connection_retry_on_startup=True)
    # cookiecutter-django's LOGGING: the root logger at INFO to the console, in its "verbose" format.
    verbose = {"format": "%(levelname)s %(asctime)s %(module)s %(process)d %(thread)d %(message)s"}
    console = {"class": "logging.StreamHandler", "formatter": "verbose"}
    root = {"level": "INFO", "handlers": ["console"]}
    config = {"version": 1, "formatters": {"verbose": verbose}, "handlers": {"console": console}, "root": root}
    logging.config.dictConfig({**config, "disable_existing_loggers": False})
    return app


def _build(profile: str) -> Celery[Any]:
    """The app of the profile, with the bench tasks registered on it."""
    url, options = os.environ["BENCH_REDIS_URL"], dict[str, Any]()
    if profile == "generated":
        from {{ cookiecutter.__package }}.celery_app import app
        from {{ cookiecutter.__package }}.config.queues import DEFAULT_QUEUE

        options["queue"] = DEFAULT_QUEUE
    elif profile in ("stock", "django"):
        app = Celery("bench_stock", broker=url) if profile == "stock" else _django_app(url)
    else:
        raise SystemExit(f"BENCH_PROFILE {profile!r} must be generated, stock or django")
    app.conf.update(json.loads(os.environ.get("BENCH_CONF") or "{}"))

    # Completions are counted with one INCR per task, the same cost in every profile. Not with results (stock has no
    # result backend), events (off in stock) or queue length (a prefetched message has left the queue but not run).
    @app.task(name="bench.noop", **options)
    def noop() -> None:
        _redis().incr(COUNTER)

    @app.task(name="bench.sleep", **options)
    def sleep(seconds: float) -> None:
        time.sleep(seconds)  # I/O-bound: waits without using CPU, as a call to another service does
        _redis().incr(COUNTER)

    @app.task(name="bench.stamp", **options)
    def stamp(sent: float) -> None:
        # How long after its publication it started (publisher and worker share this host's clock).
        _redis().rpush(LATENCIES, time.time() - sent)
        _redis().incr(COUNTER)

    return app


def publish(app: Celery[Any], task: str, count: int, interval: float, queue: str | None, seconds: float) -> float:
    """Publish `count` tasks, one every `interval` seconds if > 0; returns the seconds it took."""
    options: dict[str, Any] = {"queue": queue} if queue else {}
    started = next_at = time.perf_counter()
    for _ in range(count):
        args = {"noop": (), "sleep": (seconds,), "stamp": (time.time(),)}[task]
        app.tasks[f"bench.{task}"].apply_async(args, **options)
        if interval:
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
    return time.perf_counter() - started


@dataclass(frozen=True)
class Setup:
    """One configuration under test: an app profile, worker flags and environment."""

    label: str
    profile: str = "generated"
    queue: str | None = None
    flags: tuple[str, ...] = WORKER_FLAGS
    workers: int = 1
    conf: str = ""  # JSON settings over the profile's (BENCH_CONF)
    env: tuple[tuple[str, str], ...] = ()
    flower: str = ""  # "": no Flower; "false"/"true": bin/flower runs next to the worker with this FLOWER_ENABLE_EVENTS

    def environ(self, url: str) -> dict[str, str]:
        """The caller's environment minus its Celery, worker and Redis variables, pointed at the bench's Redis."""
        skip = ("CELERY_", "WORKER_", "BENCH_", "REDIS_")
        env = {name: value for name, value in os.environ.items() if not name.startswith(skip)}
        env.update({f"CELERY_{name}": url for name in ("BROKER_URL", "RESULT_BACKEND", "REDBEAT_REDIS_URL")})
        env.update(REDIS_URL=url, BENCH_REDIS_URL=url, BENCH_PROFILE=self.profile, BENCH_CONF=self.conf)
        # bin/worker runs `celery` from PATH: this interpreter's. JSON logs: the production default.
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", LOG_FORMAT="json", ENVIRONMENT="development")
        # devtools is not installed (not in the wheel): its processes find it in the project directory.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH", "")]))
        return {**env, **dict(self.env)}


PLAIN = ("--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO")  # stock and cookiecutter-django


def _conf(**settings: object) -> str:
    """BENCH_CONF: `settings` over the generated ones."""
    return json.dumps(settings)


# bin/flower exists only in projects generated with use_flower=y.
FLOWER = (PROJECT / "bin" / "flower").exists()
RESULTS = {"task_ignore_result": False}  # what a task with `ignore_result=False` stores (STARTED, then its result)
EVENTS = {"worker_send_task_events": True}  # what a worker sends once Flower has enabled events

# --settings: one setting changed from the generated configuration, through BENCH_CONF, the environment or a flag.
VARIANTS: dict[str, dict[str, Any]] = {
    "results stored (ignore_result=False)": {"conf": _conf(**RESULTS)},
    "results stored, result_extended on": {"conf": _conf(**RESULTS, result_extended=True)},
    "results stored, task_track_started off": {"conf": _conf(**RESULTS, task_track_started=False)},
    "task events on": {"conf": _conf(**EVENTS)},
    "task_compression gzip": {"conf": _conf(task_compression="gzip")},
    "task_acks_late off": {"conf": _conf(task_acks_late=False)},
    "worker_max_tasks_per_child 1000": {"conf": _conf(worker_max_tasks_per_child=1000)},
    "prefetch 1 instead of 4": {"env": (("CELERY_WORKER_PREFETCH_MULTIPLIER", "1"),)},
    "--loglevel WARNING": {"flags": (*WORKER_FLAGS[:5], "WARNING", *WORKER_FLAGS[6:])},
}


def plan(with_settings: bool) -> dict[str, list[Setup]]:
    from {{ cookiecutter.__package }}.config.queues import DEFAULT_QUEUE as q
    from {{ cookiecutter.__package }}.config.queues import PROFILES
    from {{ cookiecutter.__package }}.config.settings import settings

    io = next((name for name in settings.queues if PROFILES[name].prefetch_multiplier == 1), q)
    c2, threads = (*WORKER_FLAGS[:3], "2", *WORKER_FLAGS[4:]), ("--pool", "threads", "--concurrency", "8")
    return {
        "throughput": [
            Setup(f"generated (bin/worker flags, queue `{q}`, prefetch {PROFILES[q].prefetch_multiplier})", queue=q),
            Setup("stock Celery (only broker_url)", "stock", flags=PLAIN),
            Setup("cookiecutter-django settings", "django", flags=PLAIN),
        ],
        # The generated worker as deployed: Flower off, bin/flower with its defaults, and Flower's own default.
        "flower": [
            Setup(f"generated, queue `{q}`, Flower off", queue=q),
            Setup("generated, Flower up: bin/flower defaults (FLOWER_ENABLE_EVENTS=false)", queue=q, flower="false"),
            Setup("generated, Flower up: FLOWER_ENABLE_EVENTS=true (Flower's own default)", queue=q, flower="true"),
        ]
        if FLOWER
        else [],
        "settings": [Setup(f"generated, {name}", queue=q, **v) for name, v in VARIANTS.items() if with_settings],
        "io": [
            Setup(f"generated: queue `{io}` (prefetch {PROFILES[io].prefetch_multiplier}), prefork -c 1", queue=io),
            Setup(f"generated: queue `{io}`, WORKER_POOL=threads -c 8", queue=io, flags=(*threads, *WORKER_FLAGS[4:])),
            Setup(f"stock Celery: prefork -c {os.cpu_count()} (cores), prefetch 4", "stock", flags=PLAIN[4:]),
        ],
        "layout": [
            Setup("one worker, prefork -c 2", queue=q, flags=c2),
            Setup("two workers, prefork -c 1 each (generated layout)", queue=q, workers=2),
        ],
        "startup": [
            Setup("bin/worker: --without-mingle --without-gossip", queue=q),
            Setup("with mingle and gossip (Celery's default)", queue=q, flags=WORKER_FLAGS[:-2]),
        ],
    }


def _children(pid: int) -> dict[int, list[str]]:
    """Child pid -> the fields of /proc/<child>/stat after the command name (state first)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found[int(stat.parent.name)] = fields
    return found


def _mb(pid: int, field: str, name: str = "status") -> float:
    """A kB field of /proc/<pid>/status (or smaps_rollup), in MB; 0 when the process is gone."""
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Worker:
    """A process in its own session, stopped by its process group."""

    popen: subprocess.Popen[bytes]
    log: Path
    node: str = ""

    @classmethod
    def spawn(cls, argv: list[str], env: dict[str, str], work: Path, name: str) -> "Worker":
        with (work / f"{name}.log").open("wb") as out:
            popen = subprocess.Popen(argv, env=env, cwd=work, stdout=out, stderr=out, start_new_session=True)
        return cls(popen, work / f"{name}.log", f"{name}@bench")

    @classmethod
    def start(cls, setup: Setup, name: str, work: Path, url: str) -> "Worker":
        """`celery worker` for the setup, with a heartbeat file of its own (never the default a local worker uses)."""
        queue = ("--queues", setup.queue) if setup.queue else ()
        argv = [str(BIN / "celery"), "--app", f"{__package__}.bench_apps", "worker", "--hostname", f"{name}@bench"]
        env = {**setup.environ(url), "WORKER_HEARTBEAT_FILE": str(work / f"{name}.heartbeat")}
        return cls.spawn([*argv, *queue, *setup.flags], env, work, name)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"worker exited with {self.popen.returncode}; {self.log}:\n{tail}")

    def cpu(self) -> tuple[float, float]:
        """CPU seconds (user+sys) so far of the main process and of its pool processes, exited ones included."""
        tick = os.sysconf("SC_CLK_TCK")
        with suppress(OSError):
            own = [int(x) for x in Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
            pool = sum(int(f[11]) + int(f[12]) for f in _children(self.popen.pid).values())
            return (own[0] + own[1]) / tick, (own[2] + own[3] + pool) / tick
        return 0.0, 0.0

    def memory(self, timeout: float = 15) -> tuple[float, float, float]:
        """MB: RSS of the main process, the largest RSS of a pool process, PSS of all (shared pages split).

        Waits for a full pool: a pool process recycled (worker_max_tasks_per_child) stays a zombie until the pool's
        maintenance timer, every 5 s, replaces it."""
        deadline = time.monotonic() + timeout
        while (not (kids := _children(self.popen.pid)) or any(f[0] == "Z" for f in kids.values())) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        child = max((_mb(pid, "VmRSS") for pid in kids), default=0.0)
        pss = sum(_mb(pid, "Pss", "smaps_rollup") for pid in [self.popen.pid, *kids])
        return _mb(self.popen.pid, "VmRSS"), child, pss


def stop(workers: list[Worker], timeout: float = 30) -> None:
    """SIGTERM to each process group (Celery's warm shutdown), all at once; SIGKILL what is left after `timeout`."""
    for worker in workers:
        with suppress(ProcessLookupError):
            os.killpg(worker.popen.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.popen.kill()
            worker.popen.wait()
        with suppress(ProcessLookupError):  # a pool process that outlived its parent
            os.killpg(worker.popen.pid, signal.SIGKILL)


# Only worker processes and the publisher below set BENCH_PROFILE; bench.py imports this module for Setup and Worker.
if os.environ.get("BENCH_PROFILE"):
    app = _build(os.environ["BENCH_PROFILE"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="publish bench tasks with the app of BENCH_PROFILE")
    parser.add_argument("task", choices=["noop", "sleep", "stamp"])
    parser.add_argument("count", type=int)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between publications (0: flat out)")
    parser.add_argument("--queue", help="queue to publish to (default: the profile's)")
    parser.add_argument("--seconds", type=float, default=0.05, help="sleep: how long each task waits")
    args = parser.parse_args(argv)
    print(json.dumps({"seconds": publish(app, args.task, args.count, args.interval, args.queue, args.seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
