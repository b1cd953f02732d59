"""Boot tier: the generated project's CI workflow (.github/workflows/ci.yml), run here step by step: the job that
depends on the broker (`test`, with its service containers) per broker, the other jobs once (BROKER_JOBS).

The workflow file is parsed, not copied: every job's `run:` steps run in order in the rendered project, with the
environment the workflow gives them (workflow, job and step `env:`), so a step that breaks fails here first. What
GitHub provides is replaced by the harness's own parts:

* services: the job's Redis / RabbitMQ service containers are this harness's redis-server / RabbitMQ node
  (tests/support/services.py); each env value that points at a service (redis://, amqp://) is pointed at ours;
* `uses:` steps: actions/checkout is the rendered directory; astral-sh/setup-uv is the uv of this environment
  (requirements-dev.txt), alone on PATH (not this environment's other tools); UV_PYTHON is this interpreter (no Python
  downloads here);
* `sudo apt-get install` steps are not run: the packages' binaries must be here already (tools/bootstrap.sh);
* `docker build` steps are not run (no engine here outside the compose tier): tests/boot/test_compose.py builds the
  same Dockerfile with `docker compose build`; here each build step's target must be a stage of the Dockerfile.
  `docker compose config` runs, through the standalone Compose binary when the CLI plugin is missing.

This is the one place the template's suite runs the generated project's own tests (unit and integration, as CI
runs them); the scenarios merged into them (COVERED_THERE) must pass on every broker.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker_env
import pytest
import services
import yaml
from template import CHOICES, render

pytestmark = pytest.mark.boot

WORKFLOW = Path(".github/workflows/ci.yml")
# GitHub's default shell for `run:` steps.
SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"]
# The generated suite's live tests that stand for scenarios the boot tier used to repeat: each must run and pass on
# every variant, so dropping one there reopens the gap.
COVERED_THERE = (
    "test_integration.py::test_task_runs_on_the_worker_of_its_queue[orders]",
    "test_integration.py::test_task_runs_on_the_worker_of_its_queue[notifications]",
    "test_integration.py::test_task_runs_on_the_worker_of_its_queue[prices]",
    "test_integration.py::test_workflow_summarizes_and_reports_bad_items",
    "test_integration.py::test_idempotent_task_acts_once_when_delivered_twice",
    "test_integration.py::test_bad_payload_is_rejected_recorded_and_not_retried",
    "test_integration.py::test_dead_letter_replay_sends_the_task_again",
    "test_integration.py::test_health_check_follows_the_worker",
)
# Jobs whose outcome depends on the broker (service containers, the tests against them): run for every broker. The
# others (lint, format, types, alerts, compose, kustomize) run the same commands whatever the broker, and the fast
# tier already lints, type-checks and builds every broker's render: they run once, on this broker.
BROKER_JOBS = ("test",)
BROKER_FREE_JOBS_ON = "redis"
# The URL scheme of each service the workflow may start; an env value with that scheme is pointed at ours.
SERVICE_SCHEMES = {"redis": "redis://", "rabbitmq": "amqp://"}
# Packages a workflow step installs with apt, and the binary each brings (installed here by tools/bootstrap.sh).
APT_BINARIES = {"prometheus": "promtool"}


def docker_shim(directory: Path) -> Path:
    """A `docker` for the steps when the Compose CLI plugin is missing: `docker compose` runs the standalone binary."""
    compose = docker_env.compose_command()
    if compose[:2] == ["docker", "compose"]:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "docker"
    shim.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = compose ]; then shift; exec {compose[0]} "$@"; fi\n'
        'echo "docker $1: no Docker engine in the workflow harness" >&2; exit 1\n'
    )
    shim.chmod(0o755)
    return directory


def dockerfile_stages(project: Path) -> set[str]:
    return set(re.findall(r"^FROM \S+ AS (\S+)", (project / "Dockerfile").read_text(), re.MULTILINE))


@pytest.mark.parametrize("broker", CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def test_workflow_run_steps_pass_locally(broker: str, tmp_path: Path) -> None:
    project = render(tmp_path / "render", {"broker": broker})
    workflow = yaml.safe_load((project / WORKFLOW).read_text())
    assert (project / "uv.lock").exists(), "the render has no uv.lock: every `uv sync --locked` step would fail"
    ours = {"redis": services.start_redis(tmp_path / "redis")}
    # setup-uv's part: uv and uvx only. Not this environment's bin/ (its ruff, mypy, pytest): a step must get its
    # tools from what the workflow installs, or a missing install would pass here.
    ours_bin = Path(sys.executable).parent
    tools = docker_shim(tmp_path / "tools")
    tools.mkdir(exist_ok=True)
    for name in ("uv", "uvx"):
        (tools / name).symlink_to(ours_bin / name)
    path = [entry for entry in os.environ["PATH"].split(os.pathsep) if Path(entry) != ours_bin]
    base = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    base |= {
        "PATH": os.pathsep.join([str(tools), *path]),
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "RUNNER_TEMP": str(tmp_path / "runner-temp"),
        # -rA: a PASSED line per test, to check the scenarios merged into the generated suite.
        "PYTEST_ADDOPTS": "-rA -p no:cacheprovider",
        "TEST_RUN_DIR": str(tmp_path / "test-run"),
    }
    (tmp_path / "runner-temp").mkdir()
    report: list[str] = []
    passed: set[str] = set()
    try:
        for job_name, job in workflow["jobs"].items():
            if broker != BROKER_FREE_JOBS_ON and job_name not in BROKER_JOBS:
                report.append(
                    f"{job_name}: run on broker={BROKER_FREE_JOBS_ON} (the same steps; this broker's files are "
                    "linted, type-checked and built by the fast tier)"
                )
                continue
            env = {**base, **{k: str(v) for k, v in (workflow.get("env") or {}).items()}}
            env["UV_PYTHON"] = sys.executable  # the runner's Python download, replaced by this interpreter
            for service in job.get("services", {}):
                assert service in SERVICE_SCHEMES, f"job {job_name}: no local stand-in for service {service!r}"
                if service == "rabbitmq" and service not in ours:
                    ours[service] = services.start_rabbitmq(tmp_path / "rabbitmq")
            for key, value in (job.get("env") or {}).items():
                for service, scheme in SERVICE_SCHEMES.items():
                    if str(value).startswith(scheme):
                        assert service in job.get("services", {}), f"{job_name}: {key} points at no service"
                        value = ours[service].url
                env[key] = str(value)
            for number, step in enumerate(job["steps"], 1):
                label = f"{job_name} #{number} " + (step.get("name") or step.get("run") or step["uses"]).split("\n")[0]
                if "uses" in step:
                    report.append(f"{label}: action, stood in for by the harness")
                    continue
                command = step["run"]
                if command.startswith("sudo apt-get"):
                    packages = command.rsplit("--no-install-recommends", 1)[-1].split()
                    assert all(shutil.which(APT_BINARIES[name]) for name in packages), command
                    report.append(f"{label}: installed here by tools/bootstrap.sh")
                    continue
                if command.startswith("docker build"):
                    target = re.search(r"--target (\S+)", command)
                    assert target and target.group(1) in dockerfile_stages(project), command
                    report.append(f"{label}: not run (no engine); a Dockerfile stage, test_compose.py builds the image")
                    continue
                started = time.monotonic()
                result = subprocess.run(
                    [*SHELL, command],
                    cwd=project,
                    env={**env, **{k: str(v) for k, v in (step.get("env") or {}).items()}},
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                )
                took = time.monotonic() - started
                report.append(f"{label}: exit {result.returncode}, {took:.1f} s")
                assert result.returncode == 0, (
                    f"{label} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}\n" + "\n".join(report)
                )
                if "pytest" in command:
                    summary = result.stdout.strip().splitlines()[-1]
                    report[-1] += f" ({summary.strip('= ')})"
                    assert "failed" not in summary and "skipped" not in summary and "error" not in summary, summary
                    lines = result.stdout.splitlines()
                    passed |= {line.split()[1].rsplit("/", 1)[-1] for line in lines if line.startswith("PASSED ")}
    finally:
        for service in ours.values():
            service.stop()
        print(f"\nworkflow steps, broker={broker}:\n  " + "\n  ".join(report))
    missing = sorted(set(COVERED_THERE) - passed)
    assert not missing, f"not run or not passed in the generated suite: {missing}"
    assert shutil.which("kubectl") or "kubernetes" not in workflow["jobs"] or broker != BROKER_FREE_JOBS_ON
