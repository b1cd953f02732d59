"""Fast tier: the generated alert rules, dashboard and their Kubernetes and Compose packaging.

promtool checks the rules and runs their unit tests (deploy/monitoring/alerts.test.yaml); every alert carries what
the on-call person needs (a summary, a runbook link to a section that exists, a `for:` with its reason); the
dashboard reads only metrics something exports; the opt-in monitoring component builds into an overlay with the same
rules and dashboard; Compose's `monitoring` profile resolves with every mounted file present. Whether the rules fire
on the real failures and every query returns data: tests/boot/test_prometheus.py.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import docker_env
import pytest
import yaml
from k8s_policy import Manifests, build, require_kubectl, write_datastore_env, write_secret_env
from services import require
from template import render

# Metrics the project's exporter serves (metrics.py) by suffix after "<package>_", and what else the rules and the
# dashboard may read: kube-state-metrics and cAdvisor on Kubernetes.
EXPORTED = re.compile(
    r"(task_(succeeded|failed|retried)_total|task_runtime_seconds_(bucket|sum|count)|queue_depth|dead_letters"
    r"|beat_lock_held|beat_lock_age_seconds|exporter_(broker|redis)_up|circuit_state|circuit_transitions_total)"
)
KUBERNETES = ("kube_", "container_")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("alerts"), {})


def package(project: Path) -> str:
    return json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]["__package"]


def rules(project: Path) -> list[dict]:
    groups = yaml.safe_load((project / "deploy" / "monitoring" / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries(project: Path) -> list[str]:
    dashboard = json.loads((project / "deploy" / "monitoring" / "dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers left once label matchers, ranges, grouping clauses and
    function calls are taken out."""
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    return names - {"unless", "and", "or", "bool", "offset"}


def test_promtool_checks_the_rules_and_their_unit_tests_pass(project: Path) -> None:
    promtool = require("promtool")
    monitoring = project / "deploy" / "monitoring"
    checked = subprocess.run(
        [promtool, "check", "rules", "alerts.yaml"], cwd=monitoring, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"], cwd=monitoring, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    print(f"\n{checked.stdout.strip()}\n{tested.stdout.strip()}")


def test_every_alert_has_a_test_a_summary_a_runbook_section_and_a_reasoned_for(project: Path) -> None:
    headings = re.findall(r"^## (.+)$", (project / "RUNBOOK.md").read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-") for heading in headings}
    text = (project / "deploy" / "monitoring" / "alerts.yaml").read_text()
    tests = yaml.safe_load((project / "deploy" / "monitoring" / "alerts.test.yaml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    alerts = [rule for rule in rules(project) if "alert" in rule]
    assert len(alerts) >= 10
    for rule in alerts:
        name = rule["alert"]
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["runbook_url"].rpartition("#")[2] in anchors, f"{name}: no such RUNBOOK section"
        assert "for" in rule, f"{name}: no `for:`"
        # The comment right above `for:` in this alert's block starts with the duration and says why.
        block = text[text.index(f"alert: {name}\n") :]
        reason = re.search(r"((?:\n *#[^\n]*)+)\n *for: (\S+)\n", block)
        assert reason and reason.group(1).strip().startswith(f"# {reason.group(2)}:"), f"{name}: `for:` without why"
        firing = [case for case in cases if case["alertname"] == name and case.get("exp_alerts")]
        assert firing, f"{name}: no promtool case where it fires"


def test_rules_and_dashboard_read_only_exported_metrics(project: Path) -> None:
    prefix = package(project) + "_"
    recorded = {rule["record"] for rule in rules(project) if "record" in rule}
    expressions = [rule["expr"] for rule in rules(project)] + dashboard_queries(project)
    unknown = set()
    for expr in expressions:
        for name in metric_names(expr):
            if name in recorded or name.startswith(KUBERNETES):
                continue
            if not (name.startswith(prefix) and EXPORTED.fullmatch(name.removeprefix(prefix))):
                unknown.add(name)
    assert not unknown, f"not exported by bin/metrics: {sorted(unknown)}"


def test_dashboard_is_a_grafana_dashboard_scoped_by_variables(project: Path) -> None:
    dashboard = json.loads((project / "deploy" / "monitoring" / "dashboard.json").read_text())
    assert len(dashboard["uid"]) <= 40  # Grafana's limit
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # The data source and the exporter's job are variables: one JSON for any Grafana, one environment at a time.
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "job", "namespace"]
    for expr in dashboard_queries(project):
        names = metric_names(expr)
        assert all(name.startswith(KUBERNETES) for name in names) or '{job=~"$job"}' in expr, expr
        assert not any(name.startswith(KUBERNETES) for name in names) or 'namespace="$namespace"' in expr, expr
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["description"], panel["title"]
    print(f"\ndashboard: {len(ids)} panels, {len(dashboard_queries(project))} queries")


def test_the_monitoring_component_builds_into_an_overlay_with_the_same_rules_and_dashboard(project: Path) -> None:
    k8s = project / "deploy" / "k8s"
    require_kubectl()
    overlay = k8s / "overlays" / "monitoring-opt-in"
    shutil.copytree(k8s / "overlays" / "production", overlay)
    write_secret_env(overlay)
    write_datastore_env(overlay)
    # Production as a user opts in: the commented `components:` lines enabled.
    with (overlay / "kustomization.yaml").open("a") as kustomization:
        kustomization.write("\ncomponents:\n  - ../../components/monitoring\n")
    manifests = Manifests(build(k8s, "monitoring-opt-in"))
    [namespace] = manifests.of("Namespace")
    [rule] = manifests.of("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((project / "deploy/monitoring/alerts.yaml").read_text())["groups"]
    assert rule["metadata"]["namespace"] == namespace["metadata"]["name"]
    [config_map] = [c for c in manifests.of("ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard")]
    [dashboard] = config_map["data"].values()
    assert json.loads(dashboard) == json.loads((project / "deploy/monitoring/dashboard.json").read_text())
    [monitor] = manifests.of("ServiceMonitor")
    # kube-prometheus-stack selects rules and monitors by its release label: without one they are never loaded.
    assert rule["metadata"]["labels"].get("release") and monitor["metadata"]["labels"].get("release")
    service = manifests.get("Service", "metrics")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ports = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


def test_the_default_overlays_leave_the_operator_resources_out(project: Path) -> None:
    k8s = project / "deploy" / "k8s"
    for name in ("staging", "production"):
        overlay = k8s / "overlays" / name
        write_secret_env(overlay)
        if name == "production":
            write_datastore_env(overlay)
        kinds = {doc["kind"] for doc in build(k8s, name)}
        assert not kinds & {"PrometheusRule", "ServiceMonitor"}, f"{name}: needs the Operator's CRDs by default"


def test_compose_monitoring_profile_mounts_files_that_exist(project: Path) -> None:
    result = docker_env.must(docker_env.compose_config(project, "compose.yaml", env={"COMPOSE_PROFILES": "monitoring"}))
    services = json.loads(result.stdout)["services"]
    for name in ("prometheus", "grafana"):
        service = services[name]
        assert service["healthcheck"]["test"], name
        assert all(port["host_ip"] == "127.0.0.1" for port in service["ports"]), name
        for volume in service["volumes"]:
            assert Path(volume["source"]).is_file(), f"{name} mounts {volume['source']}, which is not in the project"
    rule_files = yaml.safe_load((project / "deploy/monitoring/prometheus.yml").read_text())["rule_files"]
    mounted = {v["target"] for v in services["prometheus"]["volumes"]}
    assert set(rule_files) <= mounted
