"""A real Prometheus server for the boot tier: Debian's `prometheus`, on a free port, scraping given targets every
second and evaluating given rule files every second; stopped by PID like the other servers (services.py)."""

import os
import time
import urllib.parse
from pathlib import Path

import httpx
import yaml
from services import Service, _launch, free_port, require

READY_TIMEOUT = 60.0


def _ready(url: str) -> None:
    response = httpx.get(f"{url}/-/ready", timeout=2)
    response.raise_for_status()


def start_prometheus(workdir: Path, targets: list[str], rule_files: list[Path], interval: str = "1s") -> Service:
    """Start Prometheus with its data and config in `workdir`; return once /-/ready answers."""
    binary = require("prometheus")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "project", "static_configs": [{"targets": targets}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log_path = workdir / "prometheus.log"
    argv = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",  # POST /-/reload after a rules change
    ]
    return _launch(
        name="prometheus",
        url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=workdir,
        log_path=log_path,
        argv=argv,
        env=dict(os.environ),
        ready_check=_ready,
        ready_timeout=READY_TIMEOUT,
    )


def query(url: str, expr: str, at: float | None = None) -> list[dict]:
    """An instant query's result vector (or scalar as one sample)."""
    params = {"query": expr, **({"time": str(at)} if at else {})}
    response = httpx.get(f"{url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10)
    body = response.json()
    assert body.get("status") == "success", f"{expr}: {body}"
    result = body["data"]["result"]
    return result if isinstance(result, list) else [{"value": result}]


def alert_states(url: str) -> dict[str, str]:
    """Alert name -> "pending" or "firing" for each active alert (an alert that is neither is absent)."""
    response = httpx.get(f"{url}/api/v1/alerts", timeout=10)
    states: dict[str, str] = {}
    for alert in response.json()["data"]["alerts"]:
        name = alert["labels"]["alertname"]
        # Several instances (one per queue): firing wins.
        if states.get(name) != "firing":
            states[name] = alert["state"]
    return states


def rule_health(url: str) -> dict[str, str]:
    """Rule name -> the last evaluation's error ("" when it evaluated)."""
    response = httpx.get(f"{url}/api/v1/rules", timeout=10)
    found: dict[str, str] = {}
    for group in response.json()["data"]["groups"]:
        for rule in group["rules"]:
            found[rule["name"]] = rule.get("lastError", "")
    return found


class AlertWatch:
    """Polls /api/v1/alerts and records when one alert went pending, firing and back to inactive."""

    def __init__(self, url: str, name: str, since: float | None = None) -> None:
        self.url, self.name = url, name
        self.since = since or time.monotonic()
        self.times: dict[str, float] = {}

    def state(self) -> str:
        return alert_states(self.url).get(self.name, "inactive")

    def wait_for(self, wanted: str, timeout: float) -> float:
        """Seconds from `since` until the alert is in `wanted` ("pending", "firing", "inactive")."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            now = time.monotonic()
            if state == "pending":
                self.times.setdefault("pending", now - self.since)
            if state == "firing":
                self.times.setdefault("firing", now - self.since)
            if state == wanted:
                self.times.setdefault(wanted, now - self.since)
                return self.times[wanted]
            assert now < deadline, f"{self.name}: still {state} after {timeout:.0f}s (waiting for {wanted})"
            time.sleep(0.25)
