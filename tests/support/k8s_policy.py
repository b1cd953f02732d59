"""The Kubernetes manifests of a rendered project: built with kustomize, validated, and checked against our policies.

Shared by tests/fast/test_k8s.py (every variant, no cluster) and tests/boot/test_k8s_pods.py (the manifests'
processes run for real). Nothing here needs a cluster: `kubectl kustomize` builds offline, kubernetes-validate checks
each document against the OpenAPI schemas it bundles, and the policy checks read the built documents.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from services import skip_or_fail
from template import PLACEHOLDER

OVERLAYS = ("staging", "production")
KEDA_GROUP = "keda.sh"
# Key words of Secret keys that hold a credential: their values must be empty or the placeholder in committed files.
CREDENTIAL_WORDS = ("PASSWORD", "PASS", "SECRET", "TOKEN", "AUTH", "KEY", "COOKIE")
# Volume types the Pod Security "restricted" profile allows.
RESTRICTED_VOLUMES = {
    *("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"),
}
# ingress-nginx's per-Ingress request body limit (its default is 1m).
BODY_SIZE_ANNOTATION = "nginx.ingress.kubernetes.io/proxy-body-size"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass", "IngressClass"}
WORKLOADS = ("Deployment", "StatefulSet")
# Redis (plain, TLS on some managed offerings) and RabbitMQ (AMQP, AMQPS): egress to them must name its destination.
DATASTORE_PORTS = (6379, 6380, 5672, 5671)
ALLOWLIST_ANNOTATION = "nginx.ingress.kubernetes.io/whitelist-source-range"
# The managed datastores' range the tests put in production's datastore.env (documentation range, RFC 5737).
TEST_DATASTORE_CIDR = "192.0.2.0/24"


# --- building --------------------------------------------------------------------------------------------------------


def require_kubectl() -> str:
    """kubectl's path; without it the test is skipped with the reason, or failed when CI=true."""
    path = shutil.which("kubectl")
    if path:
        return path
    skip_or_fail("kubectl not found on PATH: the manifests cannot be built (kubectl 1.27+ bundles kustomize v5)")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as kustomize reads them: whole-line comments, the value runs to the end of the line."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value for key, value in pairs}


def write_secret_env(overlay: Path, values: Mapping[str, str] | None = None) -> dict[str, str]:
    """The overlay's secret.env, as a user makes it: a copy of secret.example.env, with `values` replacing keys."""
    pairs = {**read_env_file(overlay / "secret.example.env"), **(values or {})}
    (overlay / "secret.env").write_text("".join(f"{key}={value}\n" for key, value in pairs.items()))
    if (overlay / "datastore.example.env").exists():  # production: the managed datastores' range, also git-ignored
        write_datastore_env(overlay)
    return pairs


def write_datastore_env(overlay: Path, cidr: str = TEST_DATASTORE_CIDR) -> None:
    """Production's datastore.env, as a user makes it: the example with DATASTORE_CIDR set."""
    (overlay / "datastore.env").write_text((overlay / "datastore.example.env").read_text() + f"DATASTORE_CIDR={cidr}\n")


def build(k8s: Path, overlay: str) -> list[dict]:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>`, parsed."""
    result = subprocess.run(
        [require_kubectl(), "kustomize", str(k8s / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- schema validation -----------------------------------------------------------------------------------------------


def validation_versions(count: int = 3) -> list[str]:
    """The newest `count` Kubernetes minor versions whose schemas kubernetes-validate bundles (newest patch of each)."""
    from kubernetes_validate import utils

    newest: dict[str, str] = {}
    for version in utils.all_versions():  # ascending; each version listed twice (plain and strict schema dirs)
        newest[utils.major_minor(version)] = version
    return list(newest.values())[-count:]


def schema_problems(docs: list[dict], versions: list[str]) -> tuple[int, list[str]]:
    """Validate every document strictly (unknown fields are errors) against each version, as `kubernetes-validate
    --strict -k <version>` does. KEDA's kinds have no bundled schema: check_keda covers them. Returns the number of
    validations that passed and the problems."""
    passed, problems = 0, []
    for doc in docs:
        for version in versions:
            outcome = _validate(json.dumps(doc, sort_keys=True), version)
            if outcome is None:
                passed += 1
            elif outcome != _NO_SCHEMA:
                problems.append(f"{ref(doc)} against {version}: {outcome}")
            elif group(doc) != KEDA_GROUP:
                problems.append(f"{ref(doc)}: kubernetes-validate has no schema for it in {version}")
    return passed, problems


_NO_SCHEMA = "no schema"


@functools.cache
def _validate(doc: str, version: str) -> str | None:
    """One strict validation, remembered: most documents are the same in many variants, and each call re-reads the
    schema files. None when valid, else the problem."""
    from kubernetes_validate import utils

    try:
        utils.validate(json.loads(doc), version, strict=True)
    except utils.SchemaNotFoundError:
        return _NO_SCHEMA
    except utils.ValidationError as exc:
        return f"{'.'.join(str(part) for part in exc.path)}: {exc.message}"
    return None


# --- reading the built documents -------------------------------------------------------------------------------------


def group(doc: dict) -> str:
    return doc["apiVersion"].rpartition("/")[0]


def ref(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def selects(selector: Mapping | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels only, which is all the manifests use) or a Service's plain selector map."""
    selector = selector or {}
    assert not selector.get("matchExpressions"), "matchExpressions: extend selects() before using them"
    wanted = selector.get("matchLabels", {}) if "matchLabels" in selector else selector
    return all(labels.get(key) == value for key, value in wanted.items())


# Kubernetes expands $(VAR) in env values, command and args from the variables defined before; $$ escapes a $.
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(one, text)


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity as a number (CPU in cores, memory in bytes)."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


class Manifests:
    """The documents of one built overlay, with the lookups the checks and the boot test need."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs

    def of(self, kind: str, api_group: str | None = None) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind and (api_group is None or group(d) == api_group)]

    def get(self, kind: str, name: str) -> dict | None:
        return next((d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name), None)

    def configmap_data(self, name: str) -> dict[str, str]:
        found = self.get("ConfigMap", name)
        assert found is not None, f"ConfigMap {name} is referenced but not in the build"
        return dict(found.get("data") or {})

    def secret_data(self, name: str) -> dict[str, str]:
        found = self.get("Secret", name)
        assert found is not None, f"Secret {name} is referenced but not in the build"
        data = {key: base64.b64decode(value).decode() for key, value in (found.get("data") or {}).items()}
        return {**data, **(found.get("stringData") or {})}

    def workloads(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] in WORKLOADS]

    @staticmethod
    def containers(workload: dict) -> list[dict]:
        spec = workload["spec"]["template"]["spec"]
        return [*spec.get("initContainers", []), *spec["containers"]]

    @staticmethod
    def pod_labels(workload: dict) -> dict[str, str]:
        return workload["spec"]["template"]["metadata"].get("labels", {})

    def env(self, container: dict) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom first, then env in order, $(VAR) expanded."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                data = self.configmap_data(source["configMapRef"]["name"])
            else:
                data = self.secret_data(source["secretRef"]["name"])
            env.update({source.get("prefix", "") + key: value for key, value in data.items()})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(item["value"], env)
                continue
            source = item["valueFrom"]
            if "configMapKeyRef" in source:
                key_ref, data = source["configMapKeyRef"], self.configmap_data(source["configMapKeyRef"]["name"])
            elif "secretKeyRef" in source:
                key_ref, data = source["secretKeyRef"], self.secret_data(source["secretKeyRef"]["name"])
            else:
                raise AssertionError(f"{item['name']}: only configMapKeyRef and secretKeyRef are resolved here")
            assert key_ref["key"] in data, f"{item['name']}: key {key_ref['key']} missing from {key_ref['name']}"
            env[item["name"]] = data[key_ref["key"]]
        return env

    def by_command(self, script: str) -> list[dict]:
        """Deployments whose (first) container runs bin/<script>."""
        first = [(d, d["spec"]["template"]["spec"]["containers"][0]) for d in self.of("Deployment")]
        return [d for d, container in first if container.get("command") == [f"bin/{script}"]]

    def worker_queues(self, deployment: dict) -> list[str]:
        return self.env(deployment["spec"]["template"]["spec"]["containers"][0])["WORKER_QUEUES"].split(",")


class Checks:
    """Counts every check and collects the failures, so one run reports them all."""

    def __init__(self) -> None:
        self.count = 0
        self.failures: list[str] = []

    def __call__(self, ok: object, message: str) -> bool:
        self.count += 1
        if not ok:
            self.failures.append(message)
        return bool(ok)

    def assert_ok(self) -> None:
        assert not self.failures, f"{len(self.failures)} of {self.count} checks failed:\n" + "\n".join(self.failures)


# --- policies --------------------------------------------------------------------------------------------------------


def real_secret(key: str, value: str) -> bool:
    """True if a committed example value looks like a real credential rather than empty or the placeholder."""
    if not value or PLACEHOLDER in value:
        return False
    if any(word in key.upper() for word in CREDENTIAL_WORDS):
        return True
    parts = urlsplit(value) if "://" in value else None
    return bool(parts and parts.password)


def _probe_command(probe: dict | None) -> list[str]:
    return (probe or {}).get("exec", {}).get("command", [])


def _pod_security(workload: dict, container: dict, check: Callable[[object, str], bool]) -> None:
    """Pod Security Standards, "restricted" profile, plus a read-only root filesystem."""
    name = f"{ref(workload)}/{container['name']}"
    pod = workload["spec"]["template"]["spec"].get("securityContext", {})
    own = container.get("securityContext", {})

    def effective(field: str) -> object:
        return own.get(field, pod.get(field))

    check(effective("runAsNonRoot") is True, f"{name}: runAsNonRoot must be true")
    uid = effective("runAsUser")
    check(isinstance(uid, int) and uid > 0, f"{name}: runAsUser must be a non-zero number, not {uid!r}")
    seccomp = (effective("seccompProfile") or {}).get("type")
    check(seccomp in ("RuntimeDefault", "Localhost"), f"{name}: seccompProfile must be RuntimeDefault, not {seccomp}")
    check(own.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation must be false")
    check(not own.get("privileged"), f"{name}: must not be privileged")
    capabilities = own.get("capabilities", {})
    check("ALL" in capabilities.get("drop", []), f"{name}: capabilities must drop ALL")
    check(set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{name}: adds capabilities {capabilities}")
    check(own.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem must be true")


def check_policies(m: Manifests, check: Checks, *, slug: str, package: str, namespace: str) -> None:
    """Production hygiene over one built overlay. Every check counts; failures are collected in `check`."""
    _check_namespace_and_labels(m, check, slug, namespace)
    _check_secrets(m, check)
    for workload in m.workloads():
        _check_pod(m, check, workload)
    for deployment in m.of("Deployment"):
        _check_process(m, check, deployment, package)
    _check_network(m, check)
    _check_ingresses(m, check)
    _check_flower_exposure(m, check)


def _check_namespace_and_labels(m: Manifests, check: Checks, slug: str, namespace: str) -> None:
    ns = m.get("Namespace", namespace)
    check(ns is not None, f"Namespace {namespace} is not in the build")
    labels = (ns or {}).get("metadata", {}).get("labels", {})
    check(labels.get("pod-security.kubernetes.io/enforce") == "restricted", "the Namespace must enforce restricted")
    for doc in m.docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            check(doc["metadata"].get("namespace") == namespace, f"{ref(doc)} is not in namespace {namespace}")
        part_of = doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of")
        check(part_of == slug, f"{ref(doc)}: label app.kubernetes.io/part-of is {part_of!r}, not {slug!r}")


def _check_secrets(m: Manifests, check: Checks) -> None:
    """Only placeholders in the Secret (the build used the committed example); nothing secret in a ConfigMap."""
    for secret in m.of("Secret"):
        for key, value in m.secret_data(secret["metadata"]["name"]).items():
            check(not real_secret(key, value), f"{ref(secret)}: {key} carries a value that is not a placeholder")
    for config in m.of("ConfigMap"):
        for key in config.get("data", {}):
            secret_like = any(word in key.upper() for word in ("PASSWORD", "SECRET", "TOKEN"))
            check(not secret_like, f"{ref(config)}: {key} belongs in the Secret")


def _check_pod(m: Manifests, check: Checks, workload: dict) -> None:
    """Every container: restricted security context, requests and limits, a pinned image, probes."""
    spec = workload["spec"]["template"]["spec"]
    name = ref(workload)
    pod_labels = m.pod_labels(workload)
    served = [s for s in m.of("Service") if s["spec"].get("selector") and selects(s["spec"]["selector"], pod_labels)]
    check(spec.get("automountServiceAccountToken") is False, f"{name}: automountServiceAccountToken must be false")
    check(spec.get("enableServiceLinks") is False, f"{name}: enableServiceLinks must be false (FLOWER_PORT=tcp://)")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        check(kinds <= RESTRICTED_VOLUMES, f"{name}: volume {volume['name']} of type {kinds} breaks restricted")
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in m.containers(workload):
        where = f"{name}/{container['name']}"
        _pod_security(workload, container, check)
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            check(request and limit, f"{where}: needs requests.{resource} and limits.{resource}")
            if request and limit:
                check(quantity(request) <= quantity(limit), f"{where}: {resource} request above its limit")
        image = container.get("image", "")
        tag = image.rpartition("/")[2].partition("@")[0].partition(":")[2]
        check(tag or "@sha256:" in image, f"{where}: image {image} has no tag or digest")
        check(tag != "latest", f"{where}: image {image} uses latest")
        check("livenessProbe" in container, f"{where}: no livenessProbe")
        if served:
            check("readinessProbe" in container, f"{where}: behind a Service, so it needs a readinessProbe")
        else:
            check({"readinessProbe", "startupProbe"} & set(container), f"{where}: no startupProbe or readinessProbe")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            argv = " ".join(_probe_command(container.get(probe)))
            check("inspect" not in argv, f"{where}: {probe} `{argv}` goes through the broker; use the health check")
        if container.get("command", [""])[0].startswith("bin/"):
            mounts = {v["mountPath"]: v["name"] for v in container.get("volumeMounts", [])}
            check(mounts.get("/tmp") in empty_dirs, f"{where}: a read-only root filesystem needs an emptyDir at /tmp")


def _check_process(m: Manifests, check: Checks, deployment: dict, package: str) -> None:
    """What each process (bin/<script>) needs: probes on its own health check, grace period, replicas, budgets."""
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    name = ref(deployment)
    script = container.get("command", [""])[0].removeprefix("bin/")
    env = m.env(container)
    autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in m.of("HorizontalPodAutoscaler")}
    autoscaled |= {s["spec"]["scaleTargetRef"]["name"] for s in m.of("ScaledObject", KEDA_GROUP)}
    if deployment["metadata"]["name"] in autoscaled:
        check("replicas" not in deployment["spec"], f"{name}: autoscaled, so `replicas` must be left out")
    if script in ("worker", "beat"):
        health = ["python", "-m", f"{package}.health", script]
        check(_probe_command(container.get("livenessProbe")) == health, f"{name}: liveness must be `health {script}`")
        # A worker is ready (and started) only once connected to its broker: a Secret that cannot connect stalls the
        # rollout instead of replacing working workers with idle ones that liveness calls healthy.
        started = [*health, "--ready"] if script == "worker" else health
        check(
            _probe_command(container.get("startupProbe")) == started, f"{name}: startup must be `{' '.join(started)}`"
        )
    if script == "beat":
        check(deployment["spec"].get("replicas") == 1, f"{name}: beat must have replicas: 1")
        check(deployment["spec"].get("strategy", {}).get("type") == "Recreate", f"{name}: beat must use Recreate")
        check(deployment["metadata"]["name"] not in autoscaled, f"{name}: beat must not be autoscaled")
    else:
        budgets = [p for p in m.of("PodDisruptionBudget") if selects(p["spec"]["selector"], m.pod_labels(deployment))]
        check(len(budgets) == 1, f"{name}: selected by {len(budgets)} PodDisruptionBudgets, want 1")
    if script == "worker":
        ready = [*health, "--ready"]
        check(
            _probe_command(container.get("readinessProbe")) == ready,
            f"{name}: readiness must be `health worker --ready`",
        )
        rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
        check(
            rolling.get("maxUnavailable") == 0, f"{name}: maxUnavailable must be 0: old workers go only for ready ones"
        )
        check(deployment["spec"].get("minReadySeconds", 0) > 0, f"{name}: minReadySeconds must be set")
        startup = container.get("startupProbe", {})
        window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        deadline = deployment["spec"].get("progressDeadlineSeconds", 0)
        check(deadline > window, f"{name}: progressDeadlineSeconds {deadline} must exceed the startup window {window}s")
        time_limit = int(env["CELERY_TASK_TIME_LIMIT"])
        grace = spec.get("terminationGracePeriodSeconds", 30)
        check(grace > time_limit, f"{name}: grace period {grace}s must exceed CELERY_TASK_TIME_LIMIT {time_limit}s")
        heartbeat = env.get("WORKER_HEARTBEAT_FILE", "")
        check(heartbeat.startswith("/tmp/"), f"{name}: WORKER_HEARTBEAT_FILE must be set explicitly under /tmp")
        tuned = {e["name"]: e.get("valueFrom", {}).get("configMapKeyRef") for e in container.get("env", [])}
        for variable in ("WORKER_QUEUES", "WORKER_CONCURRENCY", "CELERY_WORKER_PREFETCH_MULTIPLIER"):
            check(tuned.get(variable), f"{name}: {variable} must come from the worker-tuning ConfigMap")
        limit = quantity(container["resources"]["limits"]["memory"])
        per_child = int(env["CELERY_WORKER_MAX_MEMORY_PER_CHILD"]) * 1024
        check(limit > per_child, f"{name}: memory limit under CELERY_WORKER_MAX_MEMORY_PER_CHILD: OOM before recycle")
    if script == "flower":
        prefix = "/" + env.get("FLOWER_URL_PREFIX", "").strip("/")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container.get(probe, {}).get("httpGet", {}).get("path", "")
            check(path.startswith(prefix + "/"), f"{name}: {probe} path {path} outside FLOWER_URL_PREFIX")
        from_secret = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        credentials = {
            "FLOWER_COOKIE_SECRET",
            "FLOWER_BASIC_AUTH" if "FLOWER_BASIC_AUTH" in env else "FLOWER_OAUTH2_SECRET",
        }
        check(credentials <= from_secret, f"{name}: {sorted(credentials - from_secret)} must come from the Secret")
    if script == "web":
        paths = {p: container.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe")}
        check(paths == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}, f"{name}: probes {paths}")


def _allows(policy: dict, direction: str, port: int | str) -> bool:
    """The policy has a `direction` ("ingress"/"egress") rule covering `port` (a rule without ports covers all)."""
    if direction.capitalize() not in policy["spec"].get("policyTypes", []):
        return False
    rules = policy["spec"].get(direction, [])
    return any(not rule.get("ports") or any(p.get("port") == port for p in rule["ports"]) for rule in rules)


def _check_network(m: Manifests, check: Checks) -> None:
    """A default deny, DNS for everyone, and for every workload a policy of its own that admits its Services' ports."""
    policies = m.of("NetworkPolicy")
    deny = [p for p in policies if not p["spec"]["podSelector"] and not {"ingress", "egress"} & set(p["spec"])]
    types = set(deny[0]["spec"].get("policyTypes", [])) if deny else set()
    check(types == {"Ingress", "Egress"}, "no default-deny NetworkPolicy for ingress and egress")
    everyone = [p for p in policies if not p["spec"]["podSelector"]]
    check(any(_allows(p, "egress", 53) for p in everyone), "no NetworkPolicy lets every pod resolve names (port 53)")
    for workload in m.workloads():
        pod_labels = m.pod_labels(workload)
        own = [p for p in policies if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pod_labels)]
        check(own, f"{ref(workload)} is selected by no NetworkPolicy of its own")
        ports = {c["containerPort"]: c.get("name") for ctr in m.containers(workload) for c in ctr.get("ports", [])}
        for service in m.of("Service"):
            selector = service["spec"].get("selector")
            if not selector or not selects(selector, pod_labels):  # no selector: a Service with no pods
                continue
            for service_port in service["spec"]["ports"]:
                target = service_port.get("targetPort", service_port["port"])
                number = next((n for n, port_name in ports.items() if target in (n, port_name)), None)
                check(number is not None, f"Service {service['metadata']['name']}: targetPort {target} not on the pods")
                admitted = any(_allows(p, "ingress", number) for p in own)
                check(admitted, f"{ref(workload)}: no NetworkPolicy admits traffic to port {number} of its Service")
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if ports & set(DATASTORE_PORTS):
                check(rule.get("to"), f"{ref(policy)}: egress to any address on {sorted(ports)}; name the datastores")
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    _check_cidr(check, f"{ref(policy)}: egress ipBlock", peer["ipBlock"].get("cidr", ""))


def _check_cidr(check: Checks, what: str, cidr: str) -> None:
    """A real address range, not everyone (0.0.0.0/0, ::/0) and not a placeholder left in."""
    try:
        network = ipaddress.ip_network(cidr.strip())
    except ValueError:
        check(False, f"{what} {cidr!r} is not a CIDR")
        return
    check(network.prefixlen > 0, f"{what} {cidr!r} admits every address")


def _check_ingresses(m: Manifests, check: Checks) -> None:
    """TLS for every host, backends that exist; Flower's path is its URL prefix; the web's body limit is stated."""
    flower = m.get("Deployment", "flower")
    prefix = None
    if flower:
        prefix = "/" + m.env(flower["spec"]["template"]["spec"]["containers"][0]).get("FLOWER_URL_PREFIX", "")
    web = m.get("Deployment", "web")
    for ingress in m.of("Ingress"):
        backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
        if web and "web" in backends:
            # Explicit, not the controller's default, and the same limit bin/web enforces (web.py).
            limit = ingress["metadata"].get("annotations", {}).get(BODY_SIZE_ANNOTATION)
            served = m.env(web["spec"]["template"]["spec"]["containers"][0]).get("CELERY_MAX_PAYLOAD_BYTES")
            check(
                served is not None and limit == served,
                f"{ref(ingress)}: {BODY_SIZE_ANNOTATION} is {limit!r}, not the web pods' CELERY_MAX_PAYLOAD_BYTES "
                f"({served!r})",
            )
        tls_hosts = {host for entry in ingress["spec"].get("tls", []) for host in entry.get("hosts", [])}
        for rule in ingress["spec"]["rules"]:
            check(rule["host"] in tls_hosts, f"{ref(ingress)}: host {rule['host']} has no TLS")
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = m.get("Service", backend["name"])
                port_names = {p.get("name") for p in (service or {}).get("spec", {}).get("ports", [])}
                check(service and backend["port"].get("name") in port_names, f"{ref(ingress)}: backend {backend}")
                if backend["name"] == "flower":
                    check(path["path"] == prefix.rstrip("/"), f"{ref(ingress)}: path {path['path']} is not {prefix}")


def _served_by(rule: dict, path: str) -> str | None:
    """The Service an Ingress rule sends `path` to: an Exact match, else the longest Prefix match."""
    paths = rule["http"]["paths"]
    exact = [p for p in paths if p.get("pathType") == "Exact" and p["path"] == path]
    prefixes = [
        p
        for p in paths
        if p.get("pathType") == "Prefix" and (path == p["path"] or path.startswith(p["path"].rstrip("/") + "/"))
    ]
    chosen = exact or sorted(prefixes, key=lambda p: len(p["path"]), reverse=True)
    return chosen[0]["backend"]["service"]["name"] if chosen else None


def _check_flower_exposure(m: Manifests, check: Checks) -> None:
    """Flower reaches the internet only by opting in: an Ingress with an IP allow-list, never its open /metrics."""
    flower = m.get("Deployment", "flower")
    if not flower:
        return
    prefix = "/" + m.env(flower["spec"]["template"]["spec"]["containers"][0]).get("FLOWER_URL_PREFIX", "").strip("/")
    published = False
    for ingress in m.of("Ingress"):
        for rule in ingress["spec"]["rules"]:
            if _served_by(rule, prefix) != "flower":
                continue
            published = True
            ranges = ingress["metadata"].get("annotations", {}).get(ALLOWLIST_ANNOTATION, "")
            try:
                networks = [ipaddress.ip_network(r.strip()) for r in ranges.split(",")]
            except ValueError:
                networks = []
            check(networks, f"{ref(ingress)}: Flower published without an IP allow-list ({ranges!r})")
            check(all(n.prefixlen > 0 for n in networks), f"{ref(ingress)}: allow-list {ranges!r} admits everyone")
            for open_path in ("metrics", "healthcheck"):  # Flower serves these without a login
                served = _served_by(rule, f"{prefix}/{open_path}")
                check(served != "flower", f"{ref(ingress)}: {prefix}/{open_path} (no login) is public")
    # The README says Prometheus scrapes Flower's metrics: the Service must tell it where they are.
    service = m.get("Service", "flower") or {"metadata": {}}
    annotations = service["metadata"].get("annotations") or {}
    scrape = {key: annotations.get(f"prometheus.io/{key}") for key in ("scrape", "port", "path")}
    port = m.env(flower["spec"]["template"]["spec"]["containers"][0]).get("FLOWER_PORT", "5555")
    wanted = {"scrape": "true", "port": port, "path": f"{prefix}/metrics".replace("//", "/")}
    check(scrape == wanted, f"Service flower: Prometheus annotations {scrape} != {wanted}")
    pod_labels = m.pod_labels(flower)
    for policy in m.of("NetworkPolicy"):
        if not policy["spec"]["podSelector"] or not selects(policy["spec"]["podSelector"], pod_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                namespace = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                check(
                    namespace == "monitoring" or published,
                    f"{ref(policy)}: admits {peer} to Flower, which has no Ingress (only Prometheus needs it)",
                )


def check_keda(m: Manifests, check: Checks, *, broker: str) -> None:
    """Structural checks for KEDA's objects, which kubernetes-validate has no schema for."""
    workers = {d["metadata"]["name"]: d for d in m.by_command("worker")}
    auths = {d["metadata"]["name"]: d for d in m.of("TriggerAuthentication", KEDA_GROUP)}
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in m.of("HorizontalPodAutoscaler")}
    scaled = m.of("ScaledObject", KEDA_GROUP)
    check(sorted(s["spec"]["scaleTargetRef"]["name"] for s in scaled) == sorted(workers), "one ScaledObject per worker")
    for obj in scaled:
        name = ref(obj)
        check(obj["apiVersion"] == "keda.sh/v1alpha1", f"{name}: apiVersion {obj['apiVersion']}")
        target = obj["spec"]["scaleTargetRef"]
        deployment = m.get(target.get("kind", "Deployment"), target["name"])
        if not check(deployment is not None, f"{name}: scaleTargetRef {target} names no Deployment in the build"):
            continue
        check(target["name"] not in hpa_targets, f"{name}: {target['name']} also has an HPA; KEDA creates its own")
        check(obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"], f"{name}: min above max")
        queues = m.worker_queues(deployment)
        check(len(queues) == 1, f"{name}: worker consumes {queues}; several triggers scale on the max, not the sum")
        env = m.env(deployment["spec"]["template"]["spec"]["containers"][0])
        triggers = obj["spec"]["triggers"]
        check(len(triggers) == 1, f"{name}: {len(triggers)} triggers")
        for trigger in triggers:
            meta = trigger["metadata"]
            check(meta.get("unsafeSsl", "false") == "false", f"{name}: unsafeSsl skips TLS verification")
            if broker == "redis":
                check(trigger["type"] == "redis", f"{name}: trigger type {trigger['type']} for a Redis broker")
                # kombu's global_keyprefix (celeryconfig.py) puts "<CELERY_KEY_PREFIX>:" before every queue's list.
                listname = f"{env.get('CELERY_KEY_PREFIX')}:{queues[0]}"
                check(meta.get("listName") == listname, f"{name}: listName {meta.get('listName')} != {listname}")
                for field in ("listLength", "activationListLength", "databaseIndex"):
                    check(str(meta.get(field, "")).isdigit(), f"{name}: {field} must be a number in a string")
                url = urlsplit(env.get("CELERY_BROKER_URL") or env["REDIS_URL"])
                database = url.path.strip("/") or "0"
                check(meta.get("databaseIndex") == database, f"{name}: databaseIndex is not the URL's database")
                tls = "true" if url.scheme == "rediss" else "false"
                check(meta.get("enableTLS", "false") == tls, f"{name}: enableTLS must be {tls} for {url.scheme}://")
            else:
                check(trigger["type"] == "rabbitmq", f"{name}: trigger type {trigger['type']} for a RabbitMQ broker")
                check(meta.get("queueName") == queues[0], f"{name}: queueName {meta.get('queueName')} != {queues}")
                check(meta.get("mode") == "QueueLength", f"{name}: mode must be QueueLength")
                check(meta.get("protocol") == "amqp", f"{name}: protocol must be amqp")
                check(str(meta.get("value", "")).isdigit(), f"{name}: value must be a number in a string")
            auth = auths.get(trigger.get("authenticationRef", {}).get("name"))
            if not check(auth is not None, f"{name}: authenticationRef names no TriggerAuthentication"):
                continue
            params = {}
            for target_ref in auth["spec"]["secretTargetRef"]:
                secret = m.get("Secret", target_ref["name"])
                if check(secret is not None, f"{ref(auth)}: Secret {target_ref['name']} is not in the build"):
                    data = m.secret_data(target_ref["name"])
                    check(target_ref["key"] in data, f"{ref(auth)}: no key {target_ref['key']} in {target_ref['name']}")
                    params[target_ref["parameter"]] = data.get(target_ref["key"])
            if broker == "redis":
                url = urlsplit(env.get("CELERY_BROKER_URL") or env["REDIS_URL"])
                check(params.get("address") == url.netloc.rpartition("@")[2], f"{ref(auth)}: address != the URL's")
                check(params.get("password") == (url.password or ""), f"{ref(auth)}: password != the URL's")
            else:
                check(params.get("host") == env["CELERY_BROKER_URL"], f"{ref(auth)}: host must be the broker URL")


def documents_by_kind(docs: list[dict]) -> Iterator[str]:
    counts: dict[str, int] = {}
    for doc in docs:
        counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
    yield from (f"{kind} {count}" for kind, count in sorted(counts.items()))
