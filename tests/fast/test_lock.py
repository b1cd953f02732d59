"""The generated project's uv.lock: one per dependency variant, in step with the rendered pyproject.toml.

Each variant (the answers `__deps` in cookiecutter.json is made of) renders exactly one uv.lock, and `uv lock --check`
passes in it for a project whose name sorts before and after the one the locks were made with. Changing
pyproject.toml without re-locking (`make lock`) fails the check. One uv version is named everywhere, and the generated
dependabot.yml passes its schema.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import docker_env
import pytest
import yaml
from packaging.requirements import Requirement
from template import CHOICES, DEPS_VARIANTS, LOCK_SLUG, ROOT, case_id, deps_key, lock_template, render

UV = str(Path(sys.executable).with_name("uv"))


def uv(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([UV, *args], cwd=project, capture_output=True, text=True, timeout=300, check=False)


def pinned_packages(project: Path) -> int:
    return (project / "uv.lock").read_text().count("[[package]]") - 1  # the project itself is one entry


@pytest.mark.parametrize("answers", DEPS_VARIANTS, ids=case_id)
@pytest.mark.parametrize("slug", ["aaa-jobs", "zzz-jobs"])
def test_each_variant_renders_one_lock_in_step_with_its_pyproject(answers: dict, slug: str, tmp_path: Path) -> None:
    assert "aaa-jobs" < LOCK_SLUG < "zzz-jobs"  # the project's entry sits elsewhere in the lock than where it was made
    assert lock_template(answers).exists(), f"no lock for {deps_key(answers)}: run `make lock`"
    project = render(tmp_path, {**answers, "project_slug": slug})
    assert [p.name for p in project.iterdir() if "lock" in p.name] == ["uv.lock"]
    assert f'name = "{slug}"' in (project / "uv.lock").read_text()
    # Offline: the check needs nothing but the two files.
    check = uv(project, "lock", "--check", "--offline")
    assert check.returncode == 0, check.stderr
    print(f"{deps_key(answers)}: {pinned_packages(project)} pinned packages")


def test_a_pyproject_change_without_relocking_fails_the_check(tmp_path: Path) -> None:
    project = render(tmp_path, DEPS_VARIANTS[0])
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pybreaker>=1.2,<2"', '"pybreaker>=1.2,<1.3"'))
    check = uv(project, "lock", "--check")
    assert check.returncode != 0 and "needs to be updated" in check.stderr, check.stderr


def test_one_uv_version_everywhere(tmp_path: Path) -> None:
    """requirements-dev.txt (the template's uv, which writes the locks), the generated required-version, the build
    backend's range and the Dockerfile's UV_VERSION name the same uv."""
    pinned = re.search(r"^uv==(\S+)$", (ROOT / "requirements-dev.txt").read_text(), re.MULTILINE).group(1)
    project = render(tmp_path, {"use_docker": "y"})
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    # A lower bound, not ==: Dependabot re-locks with its own uv and gives up on an exact pin.
    assert pyproject["tool"]["uv"]["required-version"] == f">={pinned}"
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    setup = [step for job in workflow["jobs"].values() for step in job["steps"] if "setup-uv" in step.get("uses", "")]
    assert setup and {step.get("with", {}).get("version") for step in setup} == {pinned}, setup
    # The pinned uv satisfies the backend's range, so it builds the project itself (no download).
    (backend,) = map(Requirement, pyproject["build-system"]["requires"])
    assert backend.name == "uv_build" and backend.specifier.contains(pinned), backend
    dockerfile = (project / "Dockerfile").read_text()
    assert re.search(rf"^ARG UV_VERSION={re.escape(pinned)}$", dockerfile, re.MULTILINE)
    assert subprocess.run([UV, "--version"], capture_output=True, text=True, check=True).stdout.split()[1] == pinned


@pytest.mark.parametrize("use_docker", CHOICES["use_docker"], ids=lambda value: f"use_docker={value}")
def test_dependabot_config_passes_its_schema(use_docker: str, tmp_path: Path) -> None:
    project = render(tmp_path, {"use_docker": use_docker})
    check = [docker_env.tool("check-jsonschema"), "--builtin-schema", "vendor.dependabot", ".github/dependabot.yml"]
    docker_env.must(docker_env.run(check, cwd=project))
    updates = yaml.safe_load((project / ".github" / "dependabot.yml").read_text())["updates"]
    ecosystems = [update["package-ecosystem"] for update in updates]
    # No "docker": the base image comes from an ARG, which Dependabot does not read (an entry would update nothing).
    assert ecosystems == ["uv", "github-actions"]


def test_precommit_runs_the_locked_ruff(tmp_path: Path) -> None:
    """The pre-commit hooks run the project's own ruff (.venv, from the lock), not a copy pinned in the hook config: a
    pinned copy drifts from the lock at the first `make deps-upgrade` or Dependabot update, and a commit could then
    pass the hook and fail CI's `ruff check`."""
    project = render(tmp_path, {})
    hooks = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    ruff = [hook for repo in hooks["repos"] for hook in repo["hooks"] if "ruff" in hook["entry"]]
    assert ruff, "no ruff hook in .pre-commit-config.yaml"
    for hook in ruff:
        assert hook["entry"].startswith(".venv/bin/ruff ") and hook["language"] == "system", hook
        assert not hook.get("additional_dependencies"), hook
    assert "ruff" in {package["name"] for package in tomllib.loads((project / "uv.lock").read_text())["package"]}
