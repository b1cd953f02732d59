"""Fast tier for the Docker files: every supported answer set with use_docker=y, checked without a Docker engine.

The compose files validate against the compose spec and resolve with `docker compose config` (which needs no
engine), the Dockerfile passes hadolint at warning level, and the fields that matter are checked on the resolved
configuration: pinned images, a health check on every service, ports on loopback only, secrets only as ${VAR}
references, workers that outlast the task time limit. use_docker=n renders none of these files.
"""

import fnmatch
import functools
import json
import os
import re
import tomllib
from pathlib import Path

import docker_env
import pytest
import yaml
from template import CHOICES, PLACEHOLDER, SUPPORTED, case_id, render

DOCKER_FILES = ("Dockerfile", ".dockerignore", "compose.yaml", "compose.override.yaml")
DOCKER_CASES = [answers for answers in SUPPORTED if answers.get("use_docker", CHOICES["use_docker"][0]) == "y"]
SECRET_KEY = re.compile(r"PASS|SECRET|TOKEN|AUTH", re.IGNORECASE)
# Settings whose names match SECRET_KEY but hold switches, not credentials (Grafana's anonymous viewer, dev profile).
NOT_CREDENTIALS = ("GF_AUTH_ANONYMOUS_",)


@pytest.fixture(scope="module", params=DOCKER_CASES, ids=case_id)
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("docker"), request.param)


def answers(project: Path) -> dict:
    return json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]


def dotenv(project: Path) -> dict[str, str]:
    lines = (project / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@functools.cache
def resolved(project: Path, *files: str) -> dict:
    """The configuration `docker compose config` resolves (read-only here: cached per project and file list)."""
    result = docker_env.must(docker_env.compose_config(project, *files))
    return json.loads(result.stdout)


def seconds(duration: str) -> float:
    """A compose duration as `config` prints it ("5m30s", "1m0s", "30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(value) * units[unit] for value, unit in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def image_is_pinned(image: str) -> bool:
    name, _, digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    return bool(digest or tag) and tag != "latest"


def test_compose_files_match_the_compose_spec(project: Path) -> None:
    check = [docker_env.tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    docker_env.must(docker_env.run([*check, "compose.yaml", "compose.override.yaml"], cwd=project))


def test_dockerfile_passes_hadolint(project: Path) -> None:
    hadolint = docker_env.tool("hadolint")
    docker_env.must(docker_env.run([hadolint, "--failure-threshold", "warning", "Dockerfile"], cwd=project))


def test_compose_config_resolves_with_and_without_the_dev_override(project: Path) -> None:
    plain, dev = resolved(project, "compose.yaml"), resolved(project)  # no -f: compose.override.yaml applies
    assert plain["services"].keys() == dev["services"].keys()
    package = answers(project)["__package"]
    for name, service in dev["services"].items():
        if "build" in service:
            assert service["build"]["target"] == "dev" and plain["services"][name]["build"]["target"] == "runtime"
            assert service["command"][0] == "watchfiles" and package in service["command"]
            mounts = {volume["target"]: volume for volume in service["volumes"]}
            assert mounts[f"/app/{package}"]["read_only"] and "/app/.env" not in mounts
    # The Dockerfile's dev stage installs the reload extra, which brings watchfiles.
    extras = tomllib.loads((project / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r for r in extras["reload"] if r.startswith("watchfiles")], extras
    assert "--extra reload" in (project / "Dockerfile").read_text()


def test_images_are_pinned(project: Path) -> None:
    for files in (("compose.yaml",), ()):
        for name, service in resolved(project, *files)["services"].items():
            assert image_is_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned to a tag"
    # The defaults behind ${VAR:-default}, as written.
    raw = (project / "compose.yaml").read_text() + (project / "compose.override.yaml").read_text()
    for default in re.findall(r"_IMAGE:-([^}]+)\}", raw):
        assert image_is_pinned(default), default
    dockerfile = (project / "Dockerfile").read_text()
    version = answers(project)["python_version"]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE).group(1)
    assert re.fullmatch(rf"python:{re.escape(version)}-slim-[a-z]+", base), base
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, re.MULTILINE)
    names = {alias for _, alias in stages}
    assert all(source == "${PYTHON_IMAGE}" or source in names for source, _ in stages), stages


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(project: Path) -> None:
    services = resolved(project, "compose.yaml")["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency]


def test_ports_are_published_on_loopback_only_and_processes_listen_inside(project: Path) -> None:
    services = resolved(project, "compose.yaml")["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond this machine"
    # A process listening on loopback inside its container is unreachable through the published port.
    listen = {"flower": ("FLOWER_ADDRESS", "0.0.0.0"), "web": ("WEB_BIND", "0.0.0.0:8000")}
    listen["metrics"] = ("METRICS_ADDRESS", "0.0.0.0")
    for name, (variable, value) in listen.items():
        if name in services:
            assert services[name]["environment"][variable] == value
            assert services[name]["ports"], f"{name} is not published"
    assert ("flower" in services) == (answers(project)["use_flower"] == "y")
    assert ("web" in services) == (answers(project)["use_web"] == "y")


def test_no_secret_is_written_in_the_compose_files(project: Path) -> None:
    secrets = {value for key, value in dotenv(project).items() if SECRET_KEY.search(key) and len(value) >= 16}
    for filename in ("compose.yaml", "compose.override.yaml"):
        text = (project / filename).read_text()
        assert PLACEHOLDER not in text
        assert not [secret for secret in secrets if secret.split(":")[-1] in text], f"{filename} holds a secret"
        for name, service in (yaml.safe_load(text).get("services") or {}).items():
            environment = service.get("environment") or {}
            for key, value in environment.items():
                if key.startswith(NOT_CREDENTIALS):
                    continue
                if SECRET_KEY.search(key) or ("://" in str(value) and "@" in str(value)):
                    assert "${" in str(value), f"{name}: {key} must come from a ${{VAR}} reference, not a value"


def test_required_variables_stop_compose_with_their_reason(project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    argv = [*docker_env.compose_command(), "--env-file", str(empty), "-f", "compose.yaml", "config", "--quiet"]
    env = {key: value for key, value in os.environ.items() if not key.endswith("_PASSWORD")}
    result = docker_env.run(argv, cwd=project, env=env)
    assert result.returncode != 0
    assert "set REDIS_PASSWORD in .env" in result.stderr or "set RABBITMQ_PASSWORD in .env" in result.stderr


def test_workers_are_one_per_queue_and_outlast_the_task_time_limit(project: Path) -> None:
    config = resolved(project, "compose.yaml")
    queues = answers(project)["queues"].replace(" ", "").split(",")
    workers = {name: s for name, s in config["services"].items() if name.startswith("worker-")}
    assert {s["environment"]["WORKER_QUEUES"] for s in workers.values()} == set(queues)
    limit = int(dotenv(project)["CELERY_TASK_TIME_LIMIT"])
    for name, service in workers.items():
        assert seconds(service.get("stop_grace_period", "10s")) > limit, f"{name} would be killed mid-task"
    web = config["services"].get("web")
    if web:
        graceful = re.search(r"^graceful_timeout = (\d+)", (project / "gunicorn.conf.py").read_text(), re.MULTILINE)
        assert seconds(web["stop_grace_period"]) > int(graceful.group(1))


def test_app_services_reach_the_servers_by_service_name(project: Path) -> None:
    config = resolved(project, "compose.yaml")
    for name, service in config["services"].items():
        if "build" not in service:
            continue
        assert service["image"] == config["services"]["beat"]["image"], f"{name} runs another image"
        assert "@redis:6379/" in service["environment"]["REDIS_URL"]
        if answers(project)["broker"] == "rabbitmq":
            assert "@rabbitmq:5672/" in service["environment"]["CELERY_BROKER_URL"]


def test_dockerfile_builds_a_lean_non_root_runtime_image(project: Path) -> None:
    dockerfile = (project / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    runtime = stages[-1]
    assert runtime.startswith("base AS runtime"), "the runtime stage must be last: it is what a plain build produces"
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE)
    assert not re.search(r"^ENTRYPOINT", dockerfile, re.MULTILINE), "`docker run IMAGE bin/beat` must run beat"
    assert "PYTHONDONTWRITEBYTECODE=1" in dockerfile and "PYTHONUNBUFFERED=1" in dockerfile
    # Every install is uv's, from the lock (--locked: a lock out of step with pyproject.toml fails the build), without
    # the dev extra; the project goes into the venv, not editable: the image does not depend on its source tree.
    installs = re.findall(r"uv (sync|pip|add|lock)\b([^\n]*)", dockerfile)
    assert installs and all(
        verb == "sync" and "--locked" in args and "--no-editable" in args for verb, args in installs
    )
    assert not re.search(r"--extra dev|--all-extras|pip install (?!--no-cache-dir \"uv==)", dockerfile)
    assert "COPY pyproject.toml uv.lock ./" in dockerfile
    assert not re.search(r"apt-get|gcc|build-essential", runtime)


def excluded(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule, enough for these patterns: the last matching pattern (on the path or a parent
    directory) decides, `!` re-includes, `**/` matches any depth. (fnmatch's `*` also crosses `/`; harmless here.)"""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        globs = [glob, glob.removeprefix("**/")] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatchcase(name, g) for name in candidates for g in globs):
            result = not negate
    return result


def test_dockerignore_keeps_secrets_state_and_caches_out(project: Path) -> None:
    lines = (project / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    package = answers(project)["__package"]
    for path in (
        ".env",
        ".run/dev.env",
        ".venv/bin/python",
        "tests/test_routing.py",
        ".git/config",
        ".pytest_cache/v",
        ".ruff_cache/x",
        f"{package}/__pycache__/settings.cpython-311.pyc",
        "devtools/diagnostics.py",  # the fault-drill tasks: development only
        "devtools/bench.py",
    ):
        assert excluded(patterns, path), f"{path} would enter the build context"
    needed = [
        "pyproject.toml",
        "uv.lock",
        "README.md",
        "bin/worker",
        f"{package}/config/settings.py",
        f"{package}/tasks/orders.py",
    ]
    if answers(project)["use_web"] == "y":
        needed.append("gunicorn.conf.py")
    for path in needed:
        assert not excluded(patterns, path), f"{path} is needed by the Dockerfile but ignored"
        assert (project / path).exists()


def test_use_docker_n_renders_no_docker_files(tmp_path: Path) -> None:
    project = render(tmp_path, {"use_docker": "n"})
    assert [name for name in DOCKER_FILES if (project / name).exists()] == []
    # The dependency set does not change with use_docker: one lock serves both (watchfiles stays in the reload extra).
    assert "watchfiles" in (project / "pyproject.toml").read_text()
    assert "docker compose" not in (project / "README.md").read_text()
