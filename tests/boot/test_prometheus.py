"""Boot tier: the generated alert rules on a real Prometheus, scraping the real exporter of a booted project.

Prometheus (Debian's package, tests/support/prometheus.py) scrapes `bin/metrics` every second and evaluates
deploy/monitoring/alerts.yaml every second, with time compressed as a test override: every `for:` becomes FOR and
every range of minutes WINDOW (what changes is how long, not what). Each incident is made as it happens to a user:

- the only worker of a queue stops and tasks keep arriving: CeleryQueueNotConsumed goes pending, then firing after
  its `for:`; the worker starts again: it resolves;
- beat stops: CeleryBeatLockNotHeld pending, firing; beat starts: resolved;
- tasks fail for good: CeleryDeadLettersGrowing pending, firing; no new ones for a window: resolved.

Then every expression of the rules and of the Grafana dashboard is evaluated against what was scraped and must
return data (Kubernetes-only metrics excepted: no kube-state-metrics here), and every rule must have evaluated
without error. Redis broker only: the exporter reads RabbitMQ's depths in test_ops.py, the rules are the same.
"""

import json
import os
import re
import time
from collections.abc import Iterator

import pytest
import services
import yaml
from booted import BootedProject, Proc, running_project
from prometheus import AlertWatch, alert_states, query, rule_health, start_prometheus
from services import wait_until

pytestmark = pytest.mark.boot

FOR = "4s"
WINDOW = "15s"
# Grafana's $__rate_interval, for evaluating the dashboard here: long enough to span every scenario above.
RATE_INTERVAL = "10m"
JOB = "project"  # the scrape job of tests/support/prometheus.py: the dashboard's $job
KUBERNETES = ("kube_", "container_")  # kube-state-metrics and cAdvisor: not on this machine
BAD_ORDER = {"order_id": "o-bad"}  # no amount, no currency: fails for good, one dead letter


def compressed(rules: str) -> str:
    """alerts.yaml with each `for:` as FOR and each range of minutes as WINDOW."""
    return re.sub(r"\[\d+m\]", f"[{WINDOW}]", re.sub(r"for: \d+m", f"for: {FOR}", rules))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    name = f"Alerts redis {os.environ.get('PYTEST_XDIST_WORKER', '')}".strip()
    with running_project(tmp_path_factory.mktemp("alerts"), name, "redis", workers=False) as project:
        # A rates API that is not there: fetch_rate retries and its circuit breaker gets a state (retries and circuit
        # metrics have data).
        project.env["CELERY_RATES_API_URL"] = f"http://127.0.0.1:{services.free_port()}"
        project.env["CELERY_RATES_API_CONNECT_TIMEOUT"] = "1"
        for queue in project.queues:
            project.start_worker(queue)
        for proc in project.procs:
            proc.wait_for_log("ready.")
        yield project


@pytest.fixture(scope="module")
def prometheus(stack: BootedProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = services.free_port()
    exporter = stack.start("metrics", [str(stack.path / "bin" / "metrics")], env={"METRICS_PORT": str(port)})
    work = tmp_path_factory.mktemp("prometheus")
    rules = work / "alerts.yaml"
    rules.write_text(compressed((stack.path / "deploy" / "monitoring" / "alerts.yaml").read_text()))
    server = start_prometheus(work, [f"127.0.0.1:{port}"], [rules])
    try:
        wait_until(lambda: query(server.url, f"{stack.package}_exporter_redis_up == 1"), what="a first scrape")
        assert exporter.popen.poll() is None
        yield server.url
    finally:
        server.stop()


def send(stack: BootedProject, where: str, name: str, calls: list) -> None:
    stack.program("send_tasks", where, name, calls)


def report(name: str, watch: AlertWatch, resolved: float) -> None:
    print(
        f"\n{name}: pending {watch.times['pending']:.1f}s, firing {watch.times['firing']:.1f}s after the incident; "
        f"resolved {resolved:.1f}s after the fix (for: {FOR}, window {WINDOW})"
    )


def test_a_queue_nobody_consumes_fires_and_resolves(stack: BootedProject, prometheus: str) -> None:
    low = stack.queues[-1]
    assert alert_states(prometheus).get("CeleryQueueNotConsumed") is None
    worker = stack.proc(f"worker-{low}")
    assert worker.stop() == 0
    send(stack, "tasks.prices", "fetch_price", [[["EURUSD"], {}]] * 5)
    watch = AlertWatch(prometheus, "CeleryQueueNotConsumed")  # from the moment the tasks wait
    watch.wait_for("firing", timeout=60)
    assert watch.times["pending"] < watch.times["firing"], watch.times
    fixed = time.monotonic()
    stack.start_worker(low).wait_for_log("ready.")
    resolved = AlertWatch(prometheus, "CeleryQueueNotConsumed", since=fixed).wait_for("inactive", timeout=60)
    report("CeleryQueueNotConsumed", watch, resolved)


def start_beat(stack: BootedProject, prometheus: str) -> Proc:
    """bin/beat, once it holds the lock and a scrape has seen it."""
    beat = stack.start("beat", [str(stack.path / "bin" / "beat")])
    beat.wait_for_log("Acquired lock")
    held = f"{stack.package}_beat_lock_held == 1"
    wait_until(lambda: query(prometheus, held), timeout=60, what="beat holding the lock, scraped")
    return beat


def test_beat_stopped_fires_and_resolves(stack: BootedProject, prometheus: str) -> None:
    beat = start_beat(stack, prometheus)
    # No beat ran before this test, so the alert fires until the lock is held and scraped.
    AlertWatch(prometheus, "CeleryBeatLockNotHeld").wait_for("inactive", timeout=30)
    assert beat.stop() == 0
    watch = AlertWatch(prometheus, "CeleryBeatLockNotHeld")
    watch.wait_for("firing", timeout=90)
    fixed = time.monotonic()
    stack.start("beat", [str(stack.path / "bin" / "beat")])  # as a supervisor restarts it
    resolved = AlertWatch(prometheus, "CeleryBeatLockNotHeld", since=fixed).wait_for("inactive", timeout=60)
    report("CeleryBeatLockNotHeld", watch, resolved)


def test_dead_letters_growing_fires_and_resolves(stack: BootedProject, prometheus: str) -> None:
    assert alert_states(prometheus).get("CeleryDeadLettersGrowing") is None
    send(stack, "tasks.orders", "process_order", [[[BAD_ORDER], {}]] * 3)
    watch = AlertWatch(prometheus, "CeleryDeadLettersGrowing")  # from the moment the tasks are sent
    watch.wait_for("firing", timeout=60)
    fixed = time.monotonic()  # nothing more fails: the growth leaves the window
    resolved = AlertWatch(prometheus, "CeleryDeadLettersGrowing", since=fixed).wait_for("inactive", timeout=90)
    report("CeleryDeadLettersGrowing", watch, resolved)


def test_every_rule_and_dashboard_query_returns_data(stack: BootedProject, prometheus: str) -> None:
    if not any(proc.name == "beat" and proc.popen.poll() is None for proc in stack.procs):
        start_beat(stack, prometheus)  # run alone: the beat test left none running
    # Retries and a circuit: fetch_rate against the missing rates API.
    send(stack, "tasks.rates", "fetch_rate", [[["EURUSD"], {}]])
    circuit = f"{stack.package}_circuit_state"
    wait_until(lambda: query(prometheus, circuit), timeout=60, what="a circuit scraped")
    retried = f"sum({stack.package}_task_retried_total) > 0"
    wait_until(lambda: query(prometheus, retried), timeout=60, what="a retry scraped")
    monitoring = stack.path / "deploy" / "monitoring"
    checked: list[str] = []
    empty: list[str] = []
    groups = yaml.safe_load((monitoring / "alerts.yaml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    for rule in rules:
        if "record" in rule:
            expressions = [rule["expr"]]
        else:  # an alert's expression is empty while all is well: each metric it reads must have series
            names = set(re.findall(rf"\b({stack.package}_[a-z_]+)\b", rule["expr"]))
            expressions = [f"count({name})" for name in sorted(names)]
        for expr in expressions:
            if any(name in expr for name in KUBERNETES):
                continue
            checked.append(expr)
            if not query(prometheus, expr):
                empty.append(f"{rule.get('alert') or rule['record']}: {expr}")
    dashboard = json.loads((monitoring / "dashboard.json").read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    skipped = 0
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL).replace("$job", JOB)
            if any(name in expr for name in KUBERNETES):
                skipped += 1
                continue
            checked.append(expr)
            if not query(prometheus, expr):
                empty.append(f"dashboard {panel['title']!r}: {expr}")
    errors = {name: error for name, error in rule_health(prometheus).items() if error}
    print(
        f"\nqueries checked against Prometheus: {len(checked)} ({len(rules)} rules, dashboard "
        f"{sum(len(p['targets']) for p in panels) - skipped} of {sum(len(p['targets']) for p in panels)}; "
        f"{skipped} read Kubernetes metrics); empty: {len(empty)}; rules evaluating with an error: {len(errors)}"
    )
    assert not empty, "\n".join(empty)
    assert not errors, errors
