"""Boot tier: the generated `make bench` runs end to end and prints its whole table.

`python -m devtools.bench --quick` in a rendered, installed project: its own redis-server, real workers, a real
Flower next to a worker (bin/flower defaults, and with FLOWER_ENABLE_EVENTS=true), one tiny round of every measurement.
The figures depend on the machine and are never asserted; every row must be there.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import services
from booted import install, uninstall
from template import render

pytestmark = pytest.mark.boot

# "| measurement | setup" of every row, in the order the bench prints them (default answers: queues default,high,low).
ROWS = [
    "| no-op tasks/s, one worker | generated (bin/worker flags, queue `default`, prefetch 4) |",
    "| no-op tasks/s, one worker | stock Celery (only broker_url) |",
    "| no-op tasks/s, one worker | cookiecutter-django settings |",
    "| ratio generated / stock Celery (only broker_url) |",
    "| ratio generated / cookiecutter-django settings |",
    "| worker CPU per task, ms: main process / pool | generated (",
    "| worker CPU per task, ms: main process / pool | stock Celery",
    "| worker CPU per task, ms: main process / pool | cookiecutter-django",
    "| longest pause between completions, s | generated (",
    "| longest pause between completions, s | stock Celery",
    "| longest pause between completions, s | cookiecutter-django",
    "| publish rate, tasks/s | generated (",
    "| publish rate, tasks/s | stock Celery",
    "| publish rate, tasks/s | cookiecutter-django",
    "| enqueue->start latency p50 / p99, ms | generated (",
    "| enqueue->start latency p50 / p99, ms | stock Celery",
    "| enqueue->start latency p50 / p99, ms | cookiecutter-django",
    "| worker memory after the run, MB | generated (",
    "| worker memory after the run, MB | stock Celery",
    "| worker memory after the run, MB | cookiecutter-django",
    "| Flower, no-op tasks/s, one worker; x Flower off | generated, queue `default`, Flower off |",
    "| Flower, no-op tasks/s, one worker; x Flower off | generated, Flower up: bin/flower defaults (",
    "| Flower, no-op tasks/s, one worker; x Flower off | generated, Flower up: FLOWER_ENABLE_EVENTS=true (",
    "| Flower, worker CPU per task, ms: main / pool | generated, queue `default`, Flower off |",
    "| Flower, worker CPU per task, ms: main / pool | generated, Flower up: bin/flower defaults (",
    "| Flower, worker CPU per task, ms: main / pool | generated, Flower up: FLOWER_ENABLE_EVENTS=true (",
    "| I/O task (sleep 50 ms), tasks/s | generated: queue `high` (prefetch 1), prefork -c 1 |",
    "| I/O task (sleep 50 ms), tasks/s | generated: queue `high`, WORKER_POOL=threads -c 8 |",
    "| I/O task (sleep 50 ms), tasks/s | stock Celery: prefork -c",
    "| layout, no-op tasks/s | one worker, prefork -c 2 |",
    "| layout, no-op tasks/s | two workers, prefork -c 1 each",
    "| layout ratio, two -c 1 workers / one -c 2 worker |",
    "| start-up to first task done, s | bin/worker: --without-mingle --without-gossip |",
    "| start-up to first task done, s | with mingle and gossip",
    "| liveness probe, CPU s / wall s | python -m bench_smoke.health worker |",
    "| liveness probe, CPU s / wall s | celery inspect ping -d <node> |",
    "| probe CPU ratio, inspect ping / health worker |",
    "| boot to healthy, s | redis-server, bin/worker per queue, bin/beat |",
    "| dead letters: record, s | 200 dead letters (an order payload each) |",
    "| dead letters: replay --all, s | 200 dead letters (an order payload each) |",
    "| dead letters: Redis used_memory MB, before / holding them / after replay | 200 dead letters",
    "| dead letters: memory of their keys | 200 dead letters",
]


def test_bench_quick_prints_every_row(tmp_path: Path) -> None:
    services.require("redis-server")
    project = render(tmp_path, {"project_name": "Bench Smoke"})
    install(project)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "devtools.bench", "--quick"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
    finally:
        uninstall("bench-smoke")
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[:2] == ["| measurement | setup | result |", "| --- | --- | --- |"], result.stdout
    assert len(table) == len(ROWS) + 2, result.stdout
    for expected, line in zip(ROWS, table[2:], strict=True):
        assert line.startswith(expected), f"expected a row starting {expected!r}, got {line!r}"
    assert result.stdout.startswith("Machine: "), result.stdout
