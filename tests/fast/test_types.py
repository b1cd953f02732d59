"""Fast tier: the generated code type-checks with `mypy` (strict, [tool.mypy] in the generated pyproject.toml) for a
covering set of answers, and each answer set's result is reported.

Which answers change the Python code: `broker` (the {% if %} blocks in settings, queues, health, conftest... and
broker-only modules), and the y/n options that add or drop Python files (flowerconfig.py, web.py, gunicorn.conf.py,
their tests, test_deploy_values.py). The other choices (python_version, flower_auth, use_docker, use_supervisor,
autoscaling) and the free-text answers change no Python beyond string literals, so the full product adds nothing:
every broker is checked with every optional file present, and with every optional file absent (an import of a file
that is not there fails then). A new choice must be sorted into one of the two lists, or the first test fails.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from template import CHOICES, case_id, render

CODE_AXES = ("broker", "use_flower", "use_web", "use_kubernetes")
NO_CODE_AXES = ("python_version", "flower_auth", "use_docker", "use_supervisor", "autoscaling")
OPTIONAL_FILES = {name: "n" for name in CODE_AXES if name != "broker"}
TYPED = [{"broker": broker} for broker in CHOICES["broker"]]
TYPED += [{"broker": broker, **OPTIONAL_FILES} for broker in CHOICES["broker"]]


def test_every_choice_is_sorted_by_whether_it_changes_code() -> None:
    assert sorted(CHOICES) == sorted(CODE_AXES + NO_CODE_AXES), "sort the new choice into CODE_AXES or NO_CODE_AXES"
    for name in CODE_AXES[1:]:
        assert CHOICES[name] == ["y", "n"], f"{name}: the covering set assumes a y/n choice"


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One cache for every render: the third-party packages and stubs (most of the work) are analysed once.
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.mark.parametrize("answers", TYPED, ids=case_id)
def test_generated_code_type_checks(answers: dict[str, str], tmp_path: Path, mypy_cache: Path) -> None:
    project = render(tmp_path, answers)
    started = time.monotonic()
    # No arguments: the files, strictness and plugins come from the project's own [tool.mypy], as `make typecheck`.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(mypy_cache)],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"mypy [{case_id(answers)}]: {summary} ({time.monotonic() - started:.1f} s)")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert summary.startswith("Success: no issues found"), summary
