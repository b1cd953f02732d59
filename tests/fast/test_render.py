"""Fast tier: render every supported answer set and check the output as text; refused answers fail in the hook."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from template import LONGEST, PLACEHOLDER, ROOT, SUPPORTED, UNSUPPORTED, case_id, load_hook, render

# Jinja that escaped rendering. `${{ '{{' }}` in a shell or CI file would be written with {% raw %}, so any of these
# in the output is a template bug.
LEFTOVER = re.compile(r"\{\{\s*cookiecutter|\{%|%\}|\{#|cookiecutter\.__")
RUFF = [sys.executable, "-m", "ruff"]
UV = str(Path(sys.executable).with_name("uv"))


@pytest.fixture(scope="module", params=SUPPORTED, ids=case_id)
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("render"), request.param)


def text_files(project: Path) -> list[Path]:
    return [p for p in project.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_no_template_syntax_left(project: Path) -> None:
    for path in text_files(project):
        match = LEFTOVER.search(path.read_text())
        assert not match, f"{path.relative_to(project)} contains {match.group(0)!r}"


def test_ruff_lint_and_format_pass(project: Path) -> None:
    for args in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        result = subprocess.run([*RUFF, *args], cwd=project, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_python_files_compile(project: Path) -> None:
    for path in project.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_config_files_parse(project: Path) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    dependencies = " ".join(pyproject["project"]["dependencies"])
    assert "celery[redis]>=5.7,<5.8" in dependencies and "redis>=8.1,<8.2" in dependencies
    assert pyproject["project"]["requires-python"] == ">=3.11"
    answers = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    assert answers["project_slug"] == project.name and "_output_dir" not in answers


def test_env_has_real_secrets_and_matches_the_example(project: Path) -> None:
    env = (project / ".env").read_text()
    example = (project / ".env.example").read_text()
    values = [line.split("=", 1)[1] for line in env.splitlines() if "=" in line and not line.startswith("#")]
    assert PLACEHOLDER in example and not [value for value in values if PLACEHOLDER in value]
    keys = [line.split("=", 1)[0] for line in env.splitlines() if "=" in line and not line.startswith("#")]
    assert keys == [line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")]
    assert (project / ".env").stat().st_mode & 0o077 == 0


def test_queues_answer_reaches_settings_and_env(project: Path) -> None:
    answers = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    queues = [q.strip() for q in answers["queues"].split(",")]
    assert f"CELERY_QUEUES={','.join(queues)}" in (project / ".env").read_text()
    settings = ast.parse((project / answers["__package"] / "config" / "settings.py").read_text())
    defaults = {
        node.target.id: node.value
        for node in ast.walk(settings)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None
    }
    assert ast.literal_eval(defaults["queues"]) == queues


def test_start_scripts_follow_the_convention(project: Path) -> None:
    for script in (project / "bin").iterdir():
        text = script.read_text()
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        assert "set -o errexit -o nounset -o pipefail" in text
        # The last command replaces the shell so the process gets signals directly.
        commands = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
        assert commands[-1].startswith("exec "), f"{script.name} does not end in exec"
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_wheel_holds_the_runtime_package_only(project: Path, tmp_path: Path) -> None:
    """The wheel uv builds (its own backend, offline): the package and its rooms; devtools/ and tests/ stay out."""
    package = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]["__package"]
    build = [UV, "build", "--wheel", "--offline", "--quiet", "--out-dir", str(tmp_path)]
    subprocess.run(build, cwd=project, check=True, capture_output=True)
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as wheel:
        tops = {name.split("/")[0] for name in wheel.namelist()}
        modules = {name.rsplit("/", 1)[0] for name in wheel.namelist() if name.endswith(".py")}
    assert {f"{package}/{room}" for room in ("config", "tasks", "runtime", "ops")} <= modules
    assert tops == {package, f"{package}-0.1.0.dist-info"}, tops
    assert (project / "devtools" / "diagnostics.py").exists()


# The dependency set each `__deps` value rendered first; every other answer set with that value must match it.
DEPENDENCY_SETS: dict[str, dict] = {}


def test_only_the_deps_answers_change_the_dependency_set(project: Path) -> None:
    """One lock per `__deps` value is enough only if no other answer (broker, Python, Docker...) changes the set."""
    deps = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]["__deps"]
    table = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    # The dev extra names the project itself (its reload extra): compare with the name taken out.
    extras = {
        name: [r.replace(table["name"], "PROJECT") for r in reqs]
        for name, reqs in table["optional-dependencies"].items()
    }
    found = {"dependencies": table["dependencies"], "extras": extras}
    assert DEPENDENCY_SETS.setdefault(deps, found) == found, f"{project.name}: add the answer that differs to __deps"


def test_lock_is_in_step_with_pyproject(project: Path) -> None:
    """Every answer set of the matrix renders a uv.lock that `uv lock --check` accepts, with no network."""
    check = subprocess.run([UV, "lock", "--check", "--offline"], cwd=project, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_replay_file_rerenders_the_same_project(project: Path, tmp_path: Path) -> None:
    from cookiecutter.main import cookiecutter
    from template import ROOT

    replay = tmp_path / "replay.json"
    shutil.copy(project / ".cookiecutter.json", replay)
    again = Path(cookiecutter(str(ROOT), replay=str(replay), output_dir=str(tmp_path)))
    for path in text_files(project):
        if path.name not in (".env",):
            assert (again / path.relative_to(project)).read_text() == path.read_text(), path.name


@pytest.mark.parametrize(("answers", "message"), UNSUPPORTED, ids=[case_id(a) for a, _ in UNSUPPORTED])
def test_refused_answers_fail_in_the_hook_and_write_nothing(
    answers: dict[str, str], message: str, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from cookiecutter.exceptions import FailedHookException

    with pytest.raises(FailedHookException):
        render(tmp_path, answers)
    assert list(tmp_path.iterdir()) == []
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    assert any(message in line for line in errors), errors


# Names as people type them, and the slug each derives by default (cookiecutter's slugify extension: transliterated,
# lowercase, apostrophes dropped, everything else between words a hyphen). The package is the slug with "_".
TYPED_NAMES = [
    ("Café Jobs", "cafe-jobs"),
    ("O'Brien Jobs", "obrien-jobs"),
    ("O\u2019Brien Jobs", "obrien-jobs"),
    ("  Acme_Jobs  v2.0 ", "acme-jobs-v2-0"),
    ("Zürich Straßenbahn", "zurich-strassenbahn"),
    (LONGEST["project_name"], "cafe-obrien-deja-vu-jobs-uber-strasse-x"),
]


def derived(answers: dict[str, str]) -> dict[str, str]:
    """Every value cookiecutter derives from `answers` with no input, as `cookiecutter --no-input` renders them."""
    from cookiecutter.generate import generate_context
    from cookiecutter.prompt import prompt_for_config

    context = generate_context(context_file=str(ROOT / "cookiecutter.json"), extra_context=answers)
    return prompt_for_config(context, no_input=True)


@pytest.mark.parametrize(("name", "slug"), TYPED_NAMES, ids=[slug for _, slug in TYPED_NAMES])
def test_typed_names_derive_a_valid_slug_and_package(name: str, slug: str) -> None:
    pre = load_hook("pre_gen_project")
    answers = derived({"project_name": name})
    print(f"\n{name!r} -> slug {answers['project_slug']!r}, package {answers['__package']!r}")
    assert (answers["project_slug"], answers["__package"]) == (slug, slug.replace("-", "_"))
    assert pre.check_names(answers) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("9 Lives", "project_slug '9-lives' must match [a-z][a-z0-9-]*"),
        # Nothing to derive a slug from: the name itself stands in, and the hook names it.
        ("\U0001f680 !!!", "project_slug '\U0001f680 !!!' must match [a-z][a-z0-9-]*"),
    ],
    ids=["leading digit", "no letters"],
)
def test_a_name_without_a_valid_slug_is_refused_in_the_hook(
    name: str, message: str, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from cookiecutter.exceptions import FailedHookException

    with pytest.raises(FailedHookException):
        render(tmp_path, {"project_name": name})
    assert list(tmp_path.iterdir()) == []
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    assert any(message in line for line in errors), errors


# An action pinned to an exact release (v1.2.3) or a full commit SHA: never a moving major tag or a branch.
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w.-]+@(v\d+\.\d+\.\d+|[0-9a-f]{40})$")


def test_ci_workflow_is_valid_and_follows_the_answers(project: Path) -> None:
    """The generated GitHub Actions workflow matches GitHub's schema and has the jobs and services its answers need.
    tests/boot/test_ci_workflow.py runs its steps."""
    import yaml

    workflow = project / ".github" / "workflows" / "ci.yml"
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    answers = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    expected = {"lint", "typecheck", "test", "alerts"}
    expected |= {"docker"} if answers["use_docker"] == "y" else set()
    expected |= {"kubernetes"} if answers["use_kubernetes"] == "y" else set()
    assert set(jobs) == expected
    assert set(jobs["test"]["services"]) == ({"redis", "rabbitmq"} if answers["broker"] == "rabbitmq" else {"redis"})
    assert yaml.safe_load(workflow.read_text())["env"]["UV_PYTHON"] == answers["python_version"]
    uses = [step["uses"] for job in jobs.values() for step in job["steps"] if "uses" in step]
    assert uses and all(PINNED_ACTION.match(action) for action in uses), uses
