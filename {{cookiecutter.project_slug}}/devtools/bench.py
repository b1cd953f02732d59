"""`make bench`: what this project's worker configuration costs, against stock Celery and cookiecutter-django's.

    python -m devtools.bench [--tasks N] [--rounds R] [--settings] [--quick]
        [--dead-letters N]

Starts its own redis-server (free port, temporary data directory) and real `celery worker` processes, each in its own
process group; every process gets the server's URL through the environment, which wins over REDIS_URL in `.env`.
Each round runs the setups being compared one after another, in a rotating order, so other load on the machine hits
them alike; the table gives the median over rounds and (min-max). Figures are printed, never asserted.
"""

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import celery
import redis

from . import devservers
from .bench_apps import BIN, COUNTER, LATENCIES, Setup, Worker, plan, stop

PKG = "{{ cookiecutter.__package }}"
PROJECT = Path(__file__).resolve().parent.parent


class Bench:
    def __init__(self, work: Path, url: str) -> None:
        self.work, self.url, self.redis = work, url, redis.Redis.from_url(url)
        self.results: dict[str, list[float]] = defaultdict(list)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.started = 0

    def start(self, setup: Setup) -> list[Worker]:
        self.started += setup.workers
        return [Worker.start(setup, f"bench{self.started - i}", self.work, self.url) for i in range(setup.workers)]

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(argv, env=env, cwd=self.work, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        return out

    def publish(self, setup: Setup, task: str, count: int, *options: str) -> float:
        """Publish from a fresh process with the setup's app, as a producer service would; returns seconds taken."""
        argv = [sys.executable, "-m", f"{__package__}.bench_apps", task, str(count), *options]
        out = self.run(argv + (["--queue", setup.queue] if setup.queue else []), setup.environ(self.url))
        return float(out.stdout.split(":")[-1].strip(" }\n"))

    def wait(self, target: int, workers: list[Worker], timeout: float) -> tuple[list[tuple[float, ...]], float]:
        """Wait for `target` completions. Returns (time, done, main CPU s, pool CPU s) at the first completion, 10%,
        90% and all of them (10%-90% leaves out the start-up and the stragglers), and the longest pause, in seconds,
        between two completions."""
        marks: dict[int, tuple[float, ...]] = {}
        last_done, pause, last_change = 0, 0.0, time.perf_counter()
        deadline = last_change + timeout
        while len(marks) < 4:
            done, now = int(self.redis.get(COUNTER) or 0), time.perf_counter()
            for index, mark in enumerate((1, max(1, target // 10), max(1, target * 9 // 10), target)):
                if done >= mark and index not in marks:
                    cpu = [sum(values) for values in zip(*(w.cpu() for w in workers), strict=True)]
                    marks[index] = (now, done, *cpu)
            if done != last_done:  # a pause starts counting at the first completion, not at start-up
                pause, last_done, last_change = max(pause, now - last_change) if last_done else 0.0, done, now
            for worker in workers:
                worker.check_alive()
            if now > deadline:
                raise RuntimeError(f"{done}/{target} tasks done after {timeout:.0f}s; logs in {self.work}")
            time.sleep(0.01 if len(marks) < 4 else 0)
        return [marks[index] for index in range(4)], pause

    def drain(self, setup: Setup, task: str, count: int, memory: bool = False) -> None:
        """Publish `count` tasks, then start the setup's workers and time how fast they empty the queue."""
        self.redis.flushall()
        seconds = ["--seconds", "0.05"] if task == "sleep" else []
        self.results[f"publish {setup.label}"].append(count / self.publish(setup, task, count, *seconds))
        started, workers = time.perf_counter(), self.start(setup)
        try:
            (first, low, high, last), pause = self.wait(count, workers, 60 + count * 0.1)
            self.results[f"first {setup.label}"].append(first[0] - started)
            self.results[f"pause {setup.label}"].append(pause)
            start, end = (low, high) if high[0] > low[0] else (first, last)  # --quick: all done between two polls
            tasks = max(1, end[1] - start[1])
            self.results[setup.label].append(tasks / (end[0] - start[0]) if end[0] > start[0] else float("nan"))
            self.results[f"cpu main {setup.label}"].append((end[2] - start[2]) * 1000 / tasks)
            self.results[f"cpu pool {setup.label}"].append((end[3] - start[3]) * 1000 / tasks)
            for name, mb in zip(("main", "child", "pss"), workers[0].memory() if memory else (), strict=False):
                self.results[f"{name} {setup.label}"].append(mb)
        finally:
            stop(workers)

    def flower(self, setup: Setup) -> Worker:
        """bin/flower, as deployed, on the bench's broker, with FLOWER_ENABLE_EVENTS from the setup; once it answers."""
        port, secret = devservers.free_port(), os.urandom(16).hex()
        env = {**setup.environ(self.url), "FLOWER_ENABLE_EVENTS": setup.flower, "FLOWER_LOGIN": "basic"}
        env.update(FLOWER_BASIC_AUTH=f"bench:{secret}", FLOWER_COOKIE_SECRET=secret, FLOWER_URL_PREFIX="")
        env.update(FLOWER_ADDRESS="127.0.0.1", FLOWER_PORT=str(port))
        self.started += 1
        flower = Worker.spawn([str(PROJECT / "bin" / "flower")], env, self.work, f"flower{self.started}")
        deadline = time.monotonic() + 60
        while True:
            flower.check_alive()
            with suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2):
                return flower
            if time.monotonic() > deadline:
                stop([flower])
                raise RuntimeError(f"Flower did not answer within 60 s; log in {flower.log}")
            time.sleep(0.2)

    def monitored(self, setup: Setup, count: int) -> None:
        """Drain `count` no-op tasks on a worker that runs next to Flower, as deployed (or without it).

        Flower starts first, then the worker, which gets what Flower broadcasts (`enable_events`, every 5 s, when Flower
        sends it). Consuming is paused while the tasks are published, then resumed and timed as in drain()."""
        self.redis.flushall()
        flower = [self.flower(setup)] if setup.flower else []
        workers = self.start(setup)
        try:
            deadline = time.monotonic() + 60
            while "ready." not in workers[0].log.read_text(errors="replace"):
                workers[0].check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready within 60 s; log in {workers[0].log}")
                time.sleep(0.1)
            if setup.flower:  # one broadcast interval and a second: events were turned on by now, or never will be
                enabled_at = time.monotonic() + 6
                while time.monotonic() < enabled_at and "enabled by remote" not in workers[0].log.read_text():
                    time.sleep(0.1)
                events = "enabled by remote" in workers[0].log.read_text()
                if events != (setup.flower == "true"):
                    raise RuntimeError(f"{setup.label}: task events {'on' if events else 'off'}; log in {self.work}")
            celery_cli = [str(BIN / "celery"), "--app", f"{__package__}.bench_apps", "control"]
            env = setup.environ(self.url)
            assert setup.queue, "a Flower setup names its queue"  # for mypy too: queue is optional in Setup
            self.run([*celery_cli, "cancel_consumer", setup.queue, "-d", workers[0].node], env)
            self.publish(setup, "noop", count)
            self.run([*celery_cli, "add_consumer", setup.queue, "-d", workers[0].node], env)
            (first, low, high, last), _ = self.wait(count, workers, 60 + count * 0.1)
            start, end = (low, high) if high[0] > low[0] else (first, last)
            tasks = max(1, end[1] - start[1])
            self.results[setup.label].append(tasks / (end[0] - start[0]) if end[0] > start[0] else float("nan"))
            self.results[f"cpu main {setup.label}"].append((end[2] - start[2]) * 1000 / tasks)
            self.results[f"cpu pool {setup.label}"].append((end[3] - start[3]) * 1000 / tasks)
        finally:
            stop(workers + flower)

    def ready(self, setup: Setup) -> list[Worker]:
        """The setup's workers, started on an empty queue and past one task: consuming, remote control up."""
        self.redis.flushall()
        workers = self.start(setup)
        try:
            self.publish(setup, "noop", 1)
            self.wait(1, workers, 120)
        except BaseException:
            stop(workers)
            raise
        return workers

    def latency(self, setup: Setup, count: int) -> None:
        """Enqueue->start on an idle worker: tasks paced at 100/s, well below capacity, so the figure is the way
        through broker and worker, not a backlog; a fresh worker, so no pool process is recycled on the way."""
        workers = self.ready(setup)
        try:
            self.publish(setup, "stamp", count, "--interval", "0.01")
            self.wait(count + 1, workers, 60)
            self.latencies[setup.label] += [float(x) * 1000 for x in self.redis.lrange(LATENCIES, 0, -1)]
        finally:
            stop(workers)

    def probe(self, setup: Setup, rounds: int) -> None:
        """CPU (user+sys of the child process) and wall seconds of each liveness probe of one live worker."""
        worker = self.ready(setup)[0]
        env = {**setup.environ(self.url), "WORKER_HEARTBEAT_FILE": str(self.work / f"bench{self.started}.heartbeat")}
        probes = {
            "health": [sys.executable, "-m", f"{PKG}.health", "worker"],
            "ping": [str(BIN / "celery"), "--app", f"{PKG}.celery_app", "inspect", "ping", "-d", worker.node],
        }
        try:
            for name in ["health", "ping", "ping", "health"] * rounds:
                before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                self.run(probes[name], env)
                wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_CHILDREN)
                self.results[f"cpu {name}"].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                self.results[f"wall {name}"].append(wall)
        finally:
            stop([worker])

    def boot(self, queues: list[str]) -> None:
        """Seconds from nothing to a healthy native stack: redis-server, bin/worker per queue, bin/beat."""
        started, procs, checks = time.perf_counter(), [], {}
        self.started += 1
        server = devservers.start_redis(self.work / f"boot{self.started}", devservers.free_port())
        env, health = Setup("boot").environ(server.url), [sys.executable, "-m", f"{PKG}.health"]
        try:
            for queue in queues:
                own = {**env, "WORKER_QUEUES": queue, "WORKER_NAME": f"bench-{queue}"}
                own["WORKER_HEARTBEAT_FILE"] = str(self.work / f"boot{self.started}-{queue}.heartbeat")
                procs.append(Worker.spawn([str(PROJECT / "bin" / "worker")], own, self.work, f"boot-{queue}"))
                checks[queue] = ([*health, "worker"], own)
            procs.append(Worker.spawn([str(PROJECT / "bin" / "beat")], env, self.work, "boot-beat"))
            checks["beat"] = ([*health, "beat"], env)
            while checks and time.perf_counter() < started + 120:
                for name, (argv, check_env) in list(checks.items()):
                    if subprocess.run(argv, env=check_env, cwd=self.work, capture_output=True).returncode == 0:
                        del checks[name]
                time.sleep(0.1)
            if checks:
                raise RuntimeError(f"not healthy after 120 s: {sorted(checks)}; logs in {self.work}")
            self.results["boot"].append(time.perf_counter() - started)
        finally:
            stop(procs)
            server.stop()

    def dead_letters(self, count: int) -> None:
        """Record `count` dead letters (an order payload each, as tasks/orders.py refuses them), then replay them all
        with `replay --all`'s code: time taken and Redis memory before, while holding them, and after."""
        from {{ cookiecutter.__package }}.celery_app import app
        from {{ cookiecutter.__package }}.config.queues import DEFAULT_QUEUE
        from {{ cookiecutter.__package }}.config.settings import settings
        from {{ cookiecutter.__package }}.runtime import deadletters

        self.redis.flushall()
        # No e-mail address: one would be redacted, and a redacted entry is listed but not replayed.
        order = {"order_id": "o-0", "amount": "-19.99", "currency": "EUR", "customer": "c-12345"}
        traceback = "\n".join(f'  File "orders.py", line {n}, in process_order' for n in range(20))
        memory = [self.redis.info("memory")["used_memory"]]
        started = time.perf_counter()
        for i in range(count):
            task, args = f"{PKG}.tasks.orders.process_order", [dict(order, order_id=f"o-{i}")]
            deadletters.record(f"bench-{i:06d}", task, args, {}, "InvalidPayload: invalid Order: amount", traceback)
        self.results["dl record"].append(time.perf_counter() - started)
        memory.append(self.redis.info("memory")["used_memory"])
        self.results["dl keys"].append(sum(self.redis.memory_usage(name) or 0 for name in deadletters._keys()))
        started = time.perf_counter()
        errors = deadletters.replay_all(app, out=lambda line: None)
        self.results["dl replay"].append(time.perf_counter() - started)
        # The queue's list as kombu names it: "<CELERY_KEY_PREFIX>:<queue>".
        queue_key = f"{settings.global_keyprefix}{DEFAULT_QUEUE}"
        queued, left = self.redis.llen(queue_key), deadletters.count()
        if errors or left or queued != count:
            raise RuntimeError(f"replay: {errors} errors, {left} dead letters left, {queued} of {count} tasks queued")
        self.redis.delete(queue_key)  # the replayed tasks, which no worker runs here
        memory.append(self.redis.info("memory")["used_memory"])
        for name, used in zip(("before", "holding", "after"), memory, strict=True):
            self.results[f"dl memory {name}"].append(used / 1_048_576)


def rotate(setups: list[Setup], index: int) -> list[Setup]:
    """Round `index` starts with a different setup, so no setup always runs right after the same one."""
    index %= max(1, len(setups))
    return setups[index:] + setups[:index]


def run(bench: Bench, groups: dict[str, list[Setup]], tasks: int, rounds: int, dead_letters: int) -> None:
    from {{ cookiecutter.__package }}.config.settings import settings

    small = max(4, tasks // 10)  # I/O tasks and latency samples per run
    for index in range(rounds):
        print(f"round {index + 1}/{rounds}", file=sys.stderr, flush=True)
        for setup in rotate(groups["throughput"] + groups["settings"], index):
            bench.drain(setup, "noop", tasks, memory=setup in groups["throughput"][:3])
        for setup in rotate(groups["throughput"][:3], index):
            bench.latency(setup, small)
        for setup in rotate(groups["flower"], index):
            bench.monitored(setup, tasks)
        for setup in rotate(groups["io"], index):
            bench.drain(setup, "sleep", small)
        for setup in rotate(groups["layout"], index):
            bench.drain(setup, "noop", tasks)
        for setup in rotate(groups["startup"], index):
            bench.drain(setup, "noop", 1)
        bench.boot(settings.queues)
        bench.dead_letters(dead_letters)
    bench.probe(groups["startup"][0], rounds)


def report(
    bench: Bench, groups: dict[str, list[Setup]], machine: str, tasks: int, rounds: int, dead_letters: int
) -> str:
    res = bench.results

    def med(key: str) -> float:
        return statistics.median(res[key])

    def cell(key: str, digits: int = 0) -> str:
        spread = f" ({min(res[key]):.{digits}f}-{max(res[key]):.{digits}f})" if len(res[key]) > 1 else ""
        return f"{med(key):.{digits}f}{spread}"

    def add(measurement: str, setups: list[Setup], value: Callable[[str], str] = cell) -> None:
        rows.extend((measurement, setup.label, value(setup.label)) for setup in setups)

    def pair(first: str, second: str) -> str:
        return f"{med(first):.2f} / {med(second):.2f}"

    def memory(label: str) -> str:
        return "RSS main {:.0f}, pool {:.0f}; PSS total {:.0f}".format(
            *(med(f"{m} {label}") for m in ("main", "child", "pss"))
        )

    def percentiles(label: str) -> str:
        cuts = statistics.quantiles(bench.latencies[label], n=100, method="inclusive")
        return f"{cuts[49]:.1f} / {cuts[98]:.1f}"

    rows: list[tuple[str, str, str]] = []
    throughput, main = groups["throughput"], groups["throughput"][:3]
    generated, stock, django = (s.label for s in throughput)
    add("no-op tasks/s, one worker", throughput)
    rows += [(f"ratio {generated.split(' (')[0]} / {x}", "", f"{med(generated) / med(x):.2f}") for x in (stock, django)]
    add(
        "one setting changed, tasks/s; x generated",
        groups["settings"],
        lambda x: f"{cell(x)}; {med(x) / med(generated):.2f}x",
    )
    add("worker CPU per task, ms: main process / pool", throughput, lambda x: pair(f"cpu main {x}", f"cpu pool {x}"))
    add("longest pause between completions, s", throughput, lambda x: cell(f"pause {x}", 2))
    add("publish rate, tasks/s", main, lambda x: cell(f"publish {x}"))
    add("enqueue->start latency p50 / p99, ms", main, percentiles)
    add("worker memory after the run, MB", main, memory)
    if groups["flower"]:
        flower, off = groups["flower"], groups["flower"][0].label
        add("Flower, no-op tasks/s, one worker; x Flower off", flower, lambda x: f"{cell(x)}; {med(x) / med(off):.2f}x")
        add("Flower, worker CPU per task, ms: main / pool", flower, lambda x: pair(f"cpu main {x}", f"cpu pool {x}"))
    add("I/O task (sleep 50 ms), tasks/s", groups["io"], lambda x: cell(x, 1))
    add("layout, no-op tasks/s", groups["layout"])
    one, two = (s.label for s in groups["layout"])
    rows.append(("layout ratio, two -c 1 workers / one -c 2 worker", "", f"{med(two) / med(one):.2f}"))
    add("start-up to first task done, s", groups["startup"], lambda x: cell(f"first {x}", 2))
    for name, command in ("health", f"python -m {PKG}.health worker"), ("ping", "celery inspect ping -d <node>"):
        rows.append(("liveness probe, CPU s / wall s", command, pair(f"cpu {name}", f"wall {name}")))
    rows.append(("probe CPU ratio, inspect ping / health worker", "", f"{med('cpu ping') / med('cpu health'):.0f}x"))
    rows.append(("boot to healthy, s", "redis-server, bin/worker per queue, bin/beat", cell("boot", 2)))
    letters = f"{dead_letters} dead letters (an order payload each)"
    per_entry = f"{med('dl keys') / dead_letters:.0f} bytes per entry (hash + index)"
    for name, key in ("record", "dl record"), ("replay --all", "dl replay"):
        timing = f"{cell(key, 2)}; {med(key) * 1000 / dead_letters:.2f} ms per entry"
        rows.append((f"dead letters: {name}, s", letters, timing))
    used = " / ".join(f"{med(f'dl memory {name}'):.1f}" for name in ("before", "holding", "after"))
    rows.append(("dead letters: Redis used_memory MB, before / holding them / after replay", letters, used))
    rows.append(("dead letters: memory of their keys", letters, per_entry))
    runs = f"{tasks} no-op tasks per throughput run, {rounds} round(s) alternating between setups; median (min-max)."
    header = [f"Machine: {machine}.", runs, "", "| measurement | setup | result |", "| --- | --- | --- |"]
    return "\n".join(header + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def machine(url: str) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown CPU")
    server = redis.Redis.from_url(url).info("server")["redis_version"]
    versions = f"Python {platform.python_version()}, Celery {celery.__version__}, redis-server {server}"
    return f"{os.cpu_count()} cores ({cpu}), {versions}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks per throughput run (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are over these (%(default)s)")
    parser.add_argument("--settings", action="store_true", help="also measure single settings changed")
    parser.add_argument("--dead-letters", type=int, default=10_000, help="dead letters replayed (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="20 tasks, 1 round: checks that everything runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.rounds, args.dead_letters = 20, 1, 200
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        server = devservers.start_redis(work / "redis", devservers.free_port())
        try:
            os.chdir(work)  # no .env here: the settings are the project's defaults
            os.environ.update(Setup("runner").environ(server.url))
            bench, groups = Bench(work, server.url), plan(args.settings)
            run(bench, groups, args.tasks, args.rounds, args.dead_letters)
            print(report(bench, groups, machine(server.url), args.tasks, args.rounds, args.dead_letters))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
