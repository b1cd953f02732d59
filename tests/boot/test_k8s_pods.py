"""Boot tier for Kubernetes: the processes the production overlay defines, run for real against the booted servers.

For each Deployment of `kubectl kustomize deploy/k8s/overlays/production` built from the booted project: its
container's command and args, and its environment as the kubelet builds it (ConfigMap and Secret references
resolved from the built output; the Secret from secret.example.env with test values), run as a local process from
the project root, as the image runs it from its WORKDIR. What the cluster would provide is stood in for: the broker
and Redis are the booted test servers, container ports are free local ports on 127.0.0.1, and each emptyDir is a
directory of its own. The probes then run as the kubelet runs them (exec commands, HTTP GETs, TCP connects) within
the kubelet's budget: they pass against the running process and fail once it is stopped.

The booted stack already runs one worker per queue named after the queue; these workers are named k8s-<queue>, and
the booted ones pause consuming (cancel_consumer) while a task per queue proves the new ones consume theirs.
Everything started here is stopped in `finally`.
"""

import base64
import secrets
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import services
from booted import BootedProject, Proc
from k8s_policy import Manifests, build, expand, read_env_file, require_kubectl, write_secret_env
from template import PLACEHOLDER

pytestmark = pytest.mark.boot
SCRIPTS = {"worker", "beat", "flower", "web", "metrics"}


@dataclass
class Pod:
    """One Deployment's container as a local process: argv, environment and ports as the manifest defines them."""

    name: str
    container: dict
    argv: list[str]
    env: dict[str, str]
    ports: dict[int | str, int] = field(default_factory=dict)  # containerPort number and name -> local port
    proc: Proc | None = None

    def local_port(self, port: int | str) -> int:
        return self.ports[port]

    def probe(self, project: BootedProject, kind: str) -> tuple[bool, str]:
        """One run of the container's `kind` probe, as the kubelet does it: (passed, what it saw)."""
        probe = self.container[kind]
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            argv = [expand(arg, self.env) for arg in probe["exec"]["command"]]
            try:
                done = project.run(*argv, env=self.env, timeout=max(timeout, 10))
            except subprocess.TimeoutExpired:
                return False, f"`{' '.join(argv)}` timed out"
            return done.returncode == 0, f"`{' '.join(argv)}` exit {done.returncode}: {done.stdout}{done.stderr}"
        if "httpGet" in probe:
            url = f"http://127.0.0.1:{self.local_port(probe['httpGet']['port'])}{probe['httpGet'].get('path', '/')}"
            status = http_status(url, timeout=max(timeout, 5))
            return 200 <= status < 400, f"GET {url}: {status or 'no answer'}"
        port = self.local_port(probe["tcpSocket"]["port"])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=max(timeout, 5)):
                return True, f"TCP 127.0.0.1:{port} open"
        except OSError as exc:
            return False, f"TCP 127.0.0.1:{port}: {exc}"

    def wait_probe(self, project: BootedProject, kind: str) -> None:
        """Poll the probe until it passes, within the budget the kubelet gives it (delay + threshold x period)."""
        probe = self.container[kind]
        budget = probe.get("initialDelaySeconds", 0) + probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
        seen = ""

        def passing() -> bool:
            nonlocal seen
            passed, seen = self.probe(project, kind)
            assert passed or self.proc is None or self.proc.popen.poll() is None, (
                f"{self.name} exited {self.proc.popen.returncode}:\n{services.log_tail(self.proc.log)}"
            )
            return passed

        services.wait_until(passing, budget, lambda: f"{self.name} {kind} passing (last: {seen})")

    def wait_started(self, project: BootedProject) -> None:
        """The startupProbe passes within its budget; then readiness and liveness pass at once."""
        self.wait_probe(project, "startupProbe")
        for kind in ("readinessProbe", "livenessProbe"):
            passed, seen = self.probe(project, kind)
            assert passed, seen

    def probes(self) -> list[str]:
        return [kind for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in self.container]

    def assert_probes_fail(self, project: BootedProject) -> None:
        """After the process stopped, every probe fails (within a few seconds: a port closing, a lock released)."""
        for kind in self.probes():
            services.wait_until(
                lambda kind=kind: not self.probe(project, kind)[0],
                10,
                lambda kind=kind: f"{self.name} {kind} failing after stop (still: {self.probe(project, kind)[1]})",
            )


def http_status(url: str, auth: str | None = None, timeout: float = 5) -> int:
    """The status code of a GET, 0 when nothing answers."""
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass
class Cluster:
    """The built production overlay and how to turn its Deployments into local processes."""

    project: BootedProject
    manifests: Manifests
    work: Path

    def deployments(self, script: str) -> list[dict]:
        return self.manifests.by_command(script)

    def pod(self, deployment: dict, extra_env: dict[str, str] | None = None) -> Pod:
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = self.manifests.env(container)
        # Each emptyDir volume: a directory of this pod's own (/tmp included: the heartbeat file lives there).
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            if mount["name"] in empty_dirs:
                mounts[mount["mountPath"]] = self.work / name / mount["name"]
                mounts[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
        ports: dict[int | str, int] = {}
        for port in container.get("ports", []):
            ports[port["containerPort"]] = services.free_port()
            if "name" in port:
                ports[port["name"]] = ports[port["containerPort"]]
        env = {key: localize(key, value, ports, mounts) for key, value in env.items()}
        if "/tmp" in mounts:
            env["TMPDIR"] = str(mounts["/tmp"])
        # The fault-drill tasks this module sends (devtools/, not in the image), as booted.project_env adds them.
        env["CELERY_EXTRA_TASK_MODULES"] = "devtools.diagnostics"
        env.update(extra_env or {})
        argv = [expand(arg, env) for arg in [*container.get("command", []), *container.get("args", [])]]
        return Pod(name, container, argv, env, ports)

    def start(self, pod: Pod) -> Pod:
        pod.proc = self.project.start(f"k8s-{pod.name}", pod.argv, pod.env)
        return pod


def localize(key: str, value: str, ports: dict[int | str, int], mounts: dict[str, Path]) -> str:
    """A container's value as it must read on this host: mount paths, listen addresses and ports made local."""
    for mount, local in mounts.items():
        if value == mount or value.startswith(mount + "/"):
            return str(local) + value[len(mount) :]
    if key.endswith("_ADDRESS") and value == "0.0.0.0":
        return "127.0.0.1"
    if key.endswith("_PORT") and value.isdigit() and int(value) in ports:
        return str(ports[int(value)])
    host, _, port = value.rpartition(":")
    if key.endswith("_BIND") and host == "0.0.0.0" and port.isdigit() and int(port) in ports:
        return f"127.0.0.1:{ports[int(port)]}"
    return value


@pytest.fixture(scope="module")
def cluster(booted: BootedProject, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    require_kubectl()
    work = tmp_path_factory.mktemp("k8s-boot")
    k8s = work / "k8s"
    # A copy: secret.env is written next to the overlay, and the booted project is shared with other modules.
    shutil.copytree(booted.path / "deploy" / "k8s", k8s)
    overlay = k8s / "overlays" / "production"
    values = {
        key: value.replace(PLACEHOLDER, secrets.token_urlsafe(24))
        for key, value in read_env_file(overlay / "secret.example.env").items()
    }
    redis = urlsplit(booted.env["REDIS_URL"])
    values.update(REDIS_URL=booted.env["REDIS_URL"])
    if "REDIS_ADDRESS" in values:
        values.update(REDIS_ADDRESS=redis.netloc.rpartition("@")[2], REDIS_PASSWORD=redis.password or "")
    if "CELERY_BROKER_URL" in values:
        values["CELERY_BROKER_URL"] = booted.env["CELERY_BROKER_URL"]
    write_secret_env(overlay, values)
    manifests = Manifests(build(k8s, "production"))
    dotenv = read_env_file(booted.path / ".env")
    defined = {
        key for d in manifests.of("Deployment") for key in manifests.env(d["spec"]["template"]["spec"]["containers"][0])
    }
    print(
        f"\nbooted project's .env keys the manifests do not set (an image has no .env): {sorted(set(dotenv) - defined)}"
    )
    return Cluster(booted, manifests, work)


def test_every_deployment_runs_a_start_script_booted_here(cluster: Cluster) -> None:
    scripts = {d["spec"]["template"]["spec"]["containers"][0]["command"][0] for d in cluster.manifests.of("Deployment")}
    assert scripts == {f"bin/{name}" for name in SCRIPTS}, scripts
    for script in scripts:
        assert (cluster.project.path / script).is_file(), f"{script} is referenced by a Deployment but not rendered"


def test_workers_consume_their_queues_and_probes_follow_them(cluster: Cluster) -> None:
    project = cluster.project
    pods = []
    paused: dict[str, list[str]] = {}
    try:
        for deployment in cluster.deployments("worker"):
            queue = cluster.manifests.worker_queues(deployment)[0]
            # Node names of their own: the booted workers are "<queue>@host".
            pods.append(cluster.start(cluster.pod(deployment, {"WORKER_NAME": f"k8s-{queue}"})))
        for pod in pods:
            pod.wait_probe(project, "startupProbe")
            pod.proc.wait_for_log("ready.")
        queues = sorted(pod.env["WORKER_QUEUES"] for pod in pods)
        assert queues == sorted(project.queues), "one worker Deployment per queue"
        for pod in pods:
            # Connected to the broker: the startupProbe passed on `--ready`, and readiness and liveness pass too.
            for kind in ("readinessProbe", "livenessProbe"):
                passed, seen = pod.probe(project, kind)
                assert passed, f"{pod.name} {kind}: {seen}"
            assert pod.env["WORKER_HEARTBEAT_FILE"].startswith(pod.env["TMPDIR"]), "heartbeat in the pod's /tmp"
        # Pause the booted workers, so a task on each queue can only reach the Deployment's worker.
        paused = project.program("pause_consumers", queues)
        tag = uuid.uuid4().hex[:8]
        calls = [{"key": f"k8s-{tag}-{queue}", "queue": queue} for queue in queues]
        ran = dict(zip(queues, project.program("record_runs", calls, True, timeout=240), strict=True))
        for pod in pods:
            task_id = ran[pod.env["WORKER_QUEUES"]]
            assert task_id in pod.proc.log.read_text(), f"{pod.name} did not run {task_id} from its queue"
        print(f"\nworkers from the manifests ran a task each: {ran}")
    finally:
        for pod in pods:
            if pod.proc:
                assert pod.proc.stop(timeout=120) == 0, f"{pod.name}: warm shutdown should exit 0"
        # Resume what was paused, and (should the pausing client have failed half-way) every booted "<queue>@host".
        restored = project.program("resume_consumers", paused, project.queues)
        for queue, nodes in paused.items():
            assert all(queue in restored.get(node, []) for node in nodes), f"{queue} not resumed on {nodes}: {restored}"
    for pod in pods:
        pod.assert_probes_fail(project)
    # The booted workers consume again: a task per queue completes with the manifest workers gone.
    project.program("record_runs", [{"key": "after-k8s", "queue": q} for q in queues], True, timeout=240)


def test_beat_sends_due_tasks_and_probes_follow_it(cluster: Cluster) -> None:
    project = cluster.project
    [deployment] = cluster.deployments("beat")
    # Test value: the interval entry is due within seconds instead of a minute. Another module's beats share this
    # Redis; this one may first wait for their lock to expire, which is what the startupProbe's budget allows for.
    pod = cluster.start(cluster.pod(deployment, {"CELERY_PRICE_REFRESH_SECONDS": "2"}))
    try:
        pod.wait_probe(project, "startupProbe")
        pod.proc.wait_for_log("Sending due task", timeout=90)
        passed, seen = pod.probe(project, "livenessProbe")
        assert passed, seen
    finally:
        assert pod.proc.stop(timeout=60) == 0, "beat should exit 0 on SIGTERM"
    # A clean stop releases the lock: `health beat` fails at once.
    pod.assert_probes_fail(project)


def test_flower_refuses_anonymous_and_probes_follow_it(cluster: Cluster) -> None:
    deployments = cluster.deployments("flower")
    if not deployments:
        pytest.skip("use_flower=n: no Flower Deployment")
    pod = cluster.start(cluster.pod(deployments[0]))
    try:
        pod.wait_started(cluster.project)
        root = f"http://127.0.0.1:{pod.local_port('http')}/{pod.env['FLOWER_URL_PREFIX']}/"
        assert http_status(root) == 401, "Flower must refuse a request without credentials"
        assert http_status(root, auth="admin:wrong-password") == 401
        if "FLOWER_BASIC_AUTH" in pod.env:
            assert http_status(root, auth=pod.env["FLOWER_BASIC_AUTH"]) == 200, "the Secret's credentials log in"
    finally:
        pod.proc.stop(timeout=30)
    pod.assert_probes_fail(cluster.project)


def test_web_probes_follow_it(cluster: Cluster) -> None:
    deployments = cluster.deployments("web")
    if not deployments:
        pytest.skip("use_web=n: no web Deployment")
    pod = cluster.start(cluster.pod(deployments[0]))
    try:
        pod.wait_started(cluster.project)
        tasks = f"http://127.0.0.1:{pod.local_port('http')}/tasks"
        assert http_status(tasks) == 401, "the API needs the Secret's WEB_API_TOKEN"
    finally:
        assert pod.proc.stop(timeout=60) == 0, "gunicorn should exit 0 on SIGTERM"
    pod.assert_probes_fail(cluster.project)


def test_metrics_exporter_probes_follow_it(cluster: Cluster) -> None:
    [deployment] = cluster.deployments("metrics")
    pod = cluster.start(cluster.pod(deployment))
    try:
        for kind in ("readinessProbe", "livenessProbe"):
            pod.wait_probe(cluster.project, kind)
        url = f"http://127.0.0.1:{pod.local_port('metrics')}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert f"{cluster.project.package}_queue_depth" in body
    finally:
        assert pod.proc.stop(timeout=30) == 0, "the exporter should exit 0 on SIGTERM"
    pod.assert_probes_fail(cluster.project)
