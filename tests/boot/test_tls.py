"""Boot tier for TLS: every connection of the project over TLS, with the server's certificate verified, per broker.

openssl makes a throwaway CA and three server certificates: a good one (SAN localhost and 127.0.0.1), one for another
host name (wrong.example.com) from the same CA, and one for the right host from a CA the project does not trust. Real
servers present them: `redis-server` with a TLS port only and, for the RabbitMQ variant, a RabbitMQ node with an ssl
listener (amqps:// broker, rediss:// results). The processes are the session's `booted` project, started against these
servers with the environment a user sets (REDIS_URL=rediss://..., CELERY_BROKER_URL=amqps://..., CELERY_SSL_CA_CERTS=
<the CA file>); the plain servers the other modules use are not touched.
"""

import base64
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import services
from booted import BootedProject, Proc
from services import TlsFiles, wait_until

pytestmark = pytest.mark.boot
# Beat with short timings through the environment (as tests/boot/test_beat.py): a 1 s entry, a 1 s loop.
FAST_BEAT = {
    "CELERY_PRICE_REFRESH_SECONDS": "1",
    "CELERY_BEAT_MAX_LOOP_INTERVAL": "1",
    "CELERY_REDBEAT_LOCK_TIMEOUT": "5",
}
# What Python's ssl module says when it refuses each bad certificate. Unknown CA: the server sends its chain up to
# the CA (Redis, RabbitMQ) or only its own certificate.
REFUSALS = {
    "wrong-host": re.compile(
        r"certificate verify failed: IP address mismatch, certificate is not valid for '127\.0\.0\.1'"
    ),
    "unknown-ca": re.compile(
        r"certificate verify failed: "
        r"(self-signed certificate in certificate chain|unable to get local issuer certificate)"
    ),
}


@dataclass
class Pki:
    ca: Path  # the CA the project is told to trust (CELERY_SSL_CA_CERTS)
    good: TlsFiles
    bad: dict[str, TlsFiles]  # "wrong-host", "unknown-ca"


def make_pki(work: Path) -> Pki:
    """A CA, a certificate for localhost/127.0.0.1, one for another host name, and one from an untrusted CA."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ca(name: str) -> None:
        openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
                "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip

    def leaf(name: str, issuer: str, san: str) -> TlsFiles:
        (work / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        )
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.pem", "-CAkey", f"{issuer}.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")  # fmt: skip
        return TlsFiles(cert=work / f"{name}.pem", key=work / f"{name}.key", ca=work / f"{issuer}.pem")

    ca("test-ca")
    ca("unknown-ca")
    return Pki(
        ca=work / "test-ca.pem",
        good=leaf("server", "test-ca", "DNS:localhost,IP:127.0.0.1"),
        bad={
            "wrong-host": leaf("wrong-host", "test-ca", "DNS:wrong.example.com"),
            "unknown-ca": leaf("untrusted", "unknown-ca", "DNS:localhost,IP:127.0.0.1"),
        },
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def rabbitmq_variant(booted: BootedProject) -> bool:
    return booted.service("rabbitmq") is not None


def start_servers(booted: BootedProject, work: Path, tls: TlsFiles) -> list[services.Service]:
    """Redis (results; also the broker of the Redis variant) and, for the RabbitMQ variant, RabbitMQ, both TLS only."""
    started = [services.start_redis(work / "redis", tls=tls)]
    if rabbitmq_variant(booted):
        started.append(services.start_rabbitmq(work / "rabbitmq", tls=tls))
    return started


def tls_env(pki: Pki, servers: list[services.Service]) -> dict[str, str]:
    """What a user sets: the TLS URLs as they are (no ssl_* parameters) and the CA bundle to verify against."""
    env = {"REDIS_URL": servers[0].url, "CELERY_SSL_CA_CERTS": str(pki.ca)}
    if len(servers) > 1:
        env["CELERY_BROKER_URL"] = servers[1].url
    return env


@pytest.fixture(scope="module")
def good(booted: BootedProject, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment that points the project at servers presenting the good certificate."""
    servers = start_servers(booted, tmp_path_factory.mktemp("tls-good"), pki.good)
    try:
        yield tls_env(pki, servers)
    finally:
        for server in reversed(servers):
            server.stop()


def start_worker(booted: BootedProject, started: list[Proc], name: str, env: dict[str, str]) -> Proc:
    """One worker on every queue (so beat's entry and each routed task find it), through bin/worker."""
    worker_env = {
        **env,
        "WORKER_QUEUES": ",".join(booted.queues),
        "WORKER_NAME": name,
        "WORKER_HEARTBEAT_FILE": str(booted.logs / f"{name}.heartbeat"),
    }
    proc = booted.start(f"worker-{name}", [str(booted.path / "bin" / "worker")], worker_env)
    started.append(proc)
    return proc


def send_receipt(booted: BootedProject, env: dict[str, str], order_id: str, *, wait: bool) -> object:
    """send_receipt touches all three Redis users: the broker (Redis variant), the result backend, redis_store."""
    return booted.program("send_receipt", order_id, wait, env=env, timeout=90)


def scrape(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def http_get(url: str, auth: str) -> str | None:
    request = urllib.request.Request(
        url, headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.read().decode()
    except OSError:
        return None


def test_worker_beat_exporter_and_health_checks_run_over_verified_tls(
    booted: BootedProject, good: dict[str, str], stopped_afterwards: list[Proc]
) -> None:
    worker = start_worker(booted, stopped_afterwards, "tls", good)
    worker.wait_for_log("ready.", timeout=90)

    # A task through the TLS broker whose result comes back through the TLS result backend, and whose idempotency key
    # and outbox entry went through the project's own TLS Redis client.
    sent = send_receipt(booted, good, "tls-1", wait=True)
    assert sent["result"] == "sent"
    wait_until(lambda: f"[{sent['id']}] succeeded" in worker.log.read_text(), what="task succeeded on the TLS worker")
    outbox = booted.program("outbox", env=good, timeout=90)
    assert "tls-1" in outbox

    # Beat (RedBeat's schedule and lock over TLS) fires a tick that the TLS worker runs.
    beat = booted.start("beat-tls", ["bin/beat"], {**good, **FAST_BEAT})
    stopped_afterwards.append(beat)
    beat.wait_for_log("Sending due task refresh-eurusd", timeout=90)
    wait_until(lambda: "fetch_price[" in worker.log.read_text(), what="beat's tick ran on the TLS worker")
    health_beat = booted.module("health", "beat", env={**good, **FAST_BEAT})
    assert health_beat.returncode == 0, health_beat.stderr

    # The exporter reads queue depths from the broker and task counters from Redis, both over TLS.
    port = services.free_port()
    exporter = booted.start("metrics-tls", ["bin/metrics"], {**good, "METRICS_PORT": str(port)})
    stopped_afterwards.append(exporter)
    prefix = booted.package

    def scraped_both() -> bool:
        samples = scrape(port) or {}
        return samples.get(f"{prefix}_exporter_broker_up") == 1 and samples.get(f"{prefix}_exporter_redis_up") == 1

    wait_until(scraped_both, what=lambda: f"a scrape with broker_up and redis_up 1:\n{services.log_tail(exporter.log)}")
    samples = scrape(port) or {}
    assert any(name.startswith(f"{prefix}_task_succeeded_total") and value >= 1 for name, value in samples.items())

    health_broker = booted.module("health", "broker", "--wait", "30", env=good)
    assert health_broker.returncode == 0, health_broker.stderr
    # CELERY_SSL_CA_CERTS unset: the system's CA store decides (OpenSSL reads SSL_CERT_FILE in place of the system's).
    system_ca = {**good, "CELERY_SSL_CA_CERTS": ""}
    assert (
        booted.module("health", "broker", env={**system_ca, "SSL_CERT_FILE": good["CELERY_SSL_CA_CERTS"]}).returncode
        == 0
    )
    untrusted = booted.module("health", "broker", env={**system_ca, "SSL_CERT_FILE": "/nonexistent"})
    assert untrusted.returncode == 1 and "certificate verify failed" in untrusted.stderr, untrusted.stderr

    for proc in (worker, beat, exporter):
        # kombu's "defaulting to insecure SSL behaviour", Celery's "ssl_cert_reqs=CERT_NONE ... vulnerable". Checked
        # before Flower starts: its `inspect conf` makes Celery mask the broker URL through a kombu Connection built
        # without options, which logs kombu's warning in the worker though it connects nowhere.
        warned = [line for line in proc.log.read_text().splitlines() if re.search("insecure SSL|CERT_NONE", line)]
        assert warned == [], f"{proc.name} warns about an unverified connection"

    # Flower: its Celery connection (inspect, events) uses the app's settings; its broker page builds a client of its
    # own from broker_use_ssl (Redis variant; the RabbitMQ page reads the management API, which is not set up here).
    flower_port = services.free_port()
    flower = booted.start("flower-tls", ["bin/flower"], {**good, "FLOWER_PORT": str(flower_port)})
    stopped_afterwards.append(flower)
    auth = dotenv(booted.path / ".env")["FLOWER_BASIC_AUTH"]
    root = f"http://127.0.0.1:{flower_port}"
    wait_until(
        lambda: "tls@" in (http_get(f"{root}/api/workers?refresh=1", auth) or ""), what="Flower lists the worker"
    )
    if not rabbitmq_variant(booted):
        page = http_get(f"{root}/broker", auth) or ""
        assert all(f">{queue}<" in page for queue in booted.queues), page[-2000:]
        assert "Unable to get queues" not in flower.log.read_text(), services.log_tail(flower.log)
    for proc in (worker, beat, exporter, flower):
        assert "certificate verify failed" not in proc.log.read_text()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unverifiable_server_certificates_are_refused(
    booted: BootedProject,
    good: dict[str, str],
    pki: Pki,
    case: str,
    tmp_path_factory: pytest.TempPathFactory,
    stopped_afterwards: list[Proc],
) -> None:
    """A server presenting a certificate for another host, or from an unknown CA: no process talks to it."""
    bad_tls = pki.bad[case]
    work = tmp_path_factory.mktemp(f"tls-{case}")
    if rabbitmq_variant(booted):
        # The amqps broker presents the bad certificate; results stay on the good TLS Redis.
        rabbit = services.start_rabbitmq(work / "rabbitmq", tls=bad_tls)
        cleanup = [rabbit]
        env = {**good, "CELERY_BROKER_URL": rabbit.url}
    else:
        redis = services.start_redis(work / "redis", tls=bad_tls)
        cleanup = [redis]
        env = {**good, "REDIS_URL": redis.url}
    try:
        worker = start_worker(booted, stopped_afterwards, f"tls-{case}", env)
        refusal = REFUSALS[case]

        def refusals() -> list[str]:
            return [line for line in worker.log.read_text().splitlines() if refusal.search(line)]

        wait_until(refusals, what=lambda: f"{refusal.pattern!r} in the worker's log:\n{services.log_tail(worker.log)}")
        print(f"\n{case} worker: {refusals()[0]}")

        # The server itself is up and holds a task: a client that skips verification (the loud opt-out) can publish.
        insecure = {**env, "CELERY_SSL_INSECURE_SKIP_VERIFY": "true"}
        sent = send_receipt(booted, insecure, f"{case}-1", wait=False)
        # The worker keeps refusing (it retries, as on any broker outage) and never runs the task.
        before = len(refusals())
        wait_until(lambda: len(refusals()) >= before + 2, what="two more refused connection attempts")
        assert worker.popen.poll() is None, "the worker should keep retrying, not exit"
        assert sent["id"] not in worker.log.read_text() and " succeeded in " not in worker.log.read_text()

        health = booted.module("health", "broker", env=env)
        assert health.returncode == 1 and refusal.search(health.stderr), health.stderr
        print(f"{case} health broker: {health.stderr.strip()}")
    finally:
        for proc in stopped_afterwards:
            proc.stop(timeout=30)
        for server in cleanup:
            server.stop()


def test_results_and_the_project_redis_refuse_a_bad_certificate_while_the_broker_is_fine(
    booted: BootedProject,
    good: dict[str, str],
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
    stopped_afterwards: list[Proc],
) -> None:
    """Not only the broker verifies: REDIS_URL (results, idempotency keys, RedBeat) on a server with a certificate for
    another host is refused, while the worker's broker connection (a good TLS server) works."""
    refusal = REFUSALS["wrong-host"]
    bad = services.start_redis(tmp_path_factory.mktemp("tls-bad-results") / "redis", tls=pki.bad["wrong-host"])
    # The broker stays on the good server (for the Redis variant: the good Redis, named as the broker explicitly).
    env = {**good, "REDIS_URL": bad.url}
    if not rabbitmq_variant(booted):
        env["CELERY_BROKER_URL"] = good["REDIS_URL"]
    try:
        worker = start_worker(booted, stopped_afterwards, "tls-bad-results", env)
        worker.wait_for_log("ready.", timeout=90)
        # Published through the shared good broker by a client whose own Redis is the good one.
        sent = send_receipt(booted, good, "bad-results-1", wait=False)

        def refusals() -> list[str]:
            return [line for line in worker.log.read_text().splitlines() if refusal.search(line)]

        wait_until(refusals, what=lambda: f"{refusal.pattern!r} in the worker's log:\n{services.log_tail(worker.log)}")
        print(f"\nworker, task {sent['id']} on a wrong-host REDIS_URL: {refusals()[0].strip()[:400]}")
        assert f"[{sent['id']}] succeeded" not in worker.log.read_text()

        # The project's own client and RedBeat's (health beat) refuse it as well.
        program = f"from {booted.package}.runtime.redis_store import client\nclient().ping()"
        store = booted.run("python", "-c", program, env=env, timeout=90)
        assert store.returncode != 0 and refusal.search(store.stderr), store.stderr[-3000:]
        beat = booted.module("health", "beat", env=env)
        assert beat.returncode == 1 and refusal.search(beat.stderr), beat.stderr
        print(f"health beat: {beat.stderr.strip()[:400]}")
    finally:
        for proc in stopped_afterwards:
            proc.stop(timeout=30)
        bad.stop()


def test_a_tls_url_with_ssl_parameters_stops_the_worker_at_start(booted: BootedProject, good: dict[str, str]) -> None:
    """One spelling redis-py reads as "no host name check" (the generated tests/test_settings.py covers the others:
    ssl_cert_reqs=required as Celery's old error suggested, a repeated key, ?ssl=true...): the worker never starts."""
    env = {
        **good,
        "REDIS_URL": good["REDIS_URL"] + "?ssl_check_hostname=no",
        "WORKER_QUEUES": booted.queues[0],
        "WORKER_NAME": "tls-refused",
        "WORKER_HEARTBEAT_FILE": str(booted.logs / "tls-refused.heartbeat"),
    }
    result = booted.run(str(booted.path / "bin" / "worker"), env=env, timeout=120)
    line = next((line for line in result.stderr.splitlines() if "has the URL parameter" in line), "")
    print(f"\nworker with ?ssl_check_hostname=no: exit {result.returncode}: {line.strip()}")
    assert result.returncode != 0
    assert "REDIS_URL has the URL parameter 'ssl_check_hostname': TLS options come from CELERY_SSL_CA_CERTS" in line
    assert "CELERY_SSL_INSECURE_SKIP_VERIFY=true" in line
