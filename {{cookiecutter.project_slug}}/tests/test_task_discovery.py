"""Task discovery (tasks/__init__.py): a new module in the tasks package is all a new task needs, and a module that
fails to import stops the worker at start instead of at its first message."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from {{ cookiecutter.__package }} import tasks

PROJECT = Path(__file__).resolve().parent.parent
TASKS_DIR = Path(tasks.__file__).parent


@pytest.fixture
def task_module() -> Iterator[tuple[str, Path]]:
    """A fresh module name in the tasks package; the file is removed afterwards."""
    name = f"probe_{uuid.uuid4().hex[:8]}"
    path = TASKS_DIR / f"{name}.py"
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # A new process: app.conf.imports is read from the tasks package when celery_app is imported.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *argv], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_every_example_module_is_listed_and_the_helpers_are_not() -> None:
    names = [name.rsplit(".", 1)[-1] for name in tasks.modules()]
    assert {"orders", "notifications", "prices", "workflows", "maintenance"} <= set(names)
    assert "base" not in names and "payloads" not in names


def test_a_new_module_in_the_tasks_package_is_picked_up(task_module: tuple[str, Path]) -> None:
    name, path = task_module
    path.write_text("from ..celery_app import app\n\n\n@app.task\ndef hello() -> str:\n    return 'hi'\n")
    code = [
        "from {{ cookiecutter.__package }}.celery_app import app",
        "app.loader.import_default_modules()",
        "print(sorted(app.tasks))",
    ]
    listed = run("-c", "\n".join(code))
    assert listed.returncode == 0, listed.stderr
    assert f"{{ cookiecutter.__package }}.tasks.{name}.hello" in listed.stdout


def test_a_task_module_that_fails_to_import_stops_the_worker_at_start(task_module: tuple[str, Path]) -> None:
    _name, path = task_module
    path.write_text("import no_such_module_for_the_test  # noqa: F401\n")
    # A real worker start: Celery imports app.conf.imports before it consumes anything. Were the error swallowed,
    # the worker would keep running and the timeout would fail this test.
    celery = ["-m", "celery", "--app", "{{ cookiecutter.__package }}.celery_app"]
    worker = run(*celery, "worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", timeout=120)
    assert worker.returncode != 0
    assert "No module named 'no_such_module_for_the_test'" in worker.stderr + worker.stdout
