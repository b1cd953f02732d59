"""The generated .pre-commit-config.yaml: every hook installs from PyPI and passes on a fresh render, committed as
a team would (git init, add); then a trailing space and a lint error are each caught by their hook.

Boot tier: pre-commit installs each hook's environment from the package index on first use (cached afterwards in
PRE_COMMIT_HOME, ~/.cache/pre-commit). mypy is a `language: system` hook that runs the project's own .venv; here that
environment is this one (it holds every dependency of the generated project), linked in as .venv.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from template import render

pytestmark = pytest.mark.boot


def pre_commit(project: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pre_commit", "run", "--all-files", "--color", "never"]
    return subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=900, check=False)


def test_pre_commit_hooks_pass_on_a_fresh_render_and_catch_a_bad_edit(tmp_path: Path) -> None:
    if not shutil.which("git"):
        pytest.fail("git not found: pre-commit needs a repository", pytrace=False)
    project = render(tmp_path, {})
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    # The project's .venv, as `make install` makes it: this environment; kept out of git like the real one.
    os.symlink(Path(sys.executable).parent.parent, project / ".venv")
    (project / ".git" / "info" / "exclude").write_text(".venv\n")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    started = time.monotonic()
    clean = pre_commit(project)
    took = time.monotonic() - started
    print(f"\npre-commit run --all-files on a fresh render: exit {clean.returncode} ({took:.1f} s)")
    assert clean.returncode == 0, clean.stdout[-6000:] + clean.stderr[-2000:]
    hooks = [line.split("...")[0].strip() for line in clean.stdout.splitlines() if line.rstrip().endswith("Passed")]
    print("passed: " + ", ".join(hooks))
    assert len(hooks) == 8, clean.stdout

    module = project / "devtools" / "diagnostics.py"
    # A trailing space, and a second `import os` (ruff F811).
    module.write_text(module.read_text().replace("import json\n", "import json \nimport os\n", 1))
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    broken = pre_commit(project)
    failed = [line.split("...")[0].strip() for line in broken.stdout.splitlines() if line.rstrip().endswith("Failed")]
    print(f"after a trailing space and a duplicate import: exit {broken.returncode}, failed: {', '.join(failed)}")
    assert broken.returncode == 1
    assert {"trim trailing whitespace", "ruff check"} <= set(failed), broken.stdout[-4000:]
