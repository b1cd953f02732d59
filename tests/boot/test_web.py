"""Boot tier for the web entry point: bin/web (gunicorn, native ASGI worker) per broker, driven over HTTP.

Runs against the session's booted project: its Redis (and RabbitMQ) and one bin/worker per queue. Checks what a
producer or an operator would notice: the token is required, tasks run on their queue's worker and their result is
readable, bad input is refused with the field named, and SIGTERM is a clean exit.
"""

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import services
from booted import BootedProject, Proc, running_web
from services import wait_until

pytestmark = pytest.mark.boot
TOKEN = secrets.token_urlsafe(24)
ORDER = {"order_id": "o-web-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}
# Each allow-listed task with a good payload; together they reach every queue of the default answers.
GOOD = {
    "orders.process_order": ORDER,
    "notifications.send_receipt": {"order_id": "web-receipt"},
    "prices.fetch_price": {"pair": "EURUSD"},
}
# One request per protected route (any id or name: authentication is checked first).
PROTECTED = [
    ("GET", "/tasks"),
    ("POST", "/tasks/orders.process_order"),
    ("GET", "/results/00000000-0000-0000-0000-000000000000"),
    ("GET", "/openapi.json"),
]


@dataclass
class Web:
    proc: Proc
    url: str

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)


@pytest.fixture(scope="module")
def web(booted: BootedProject) -> Iterator[Web]:
    with running_web(booted, "web", TOKEN) as (proc, port):
        yield Web(proc, f"http://127.0.0.1:{port}")


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p.split('/')[1]}" for m, p in PROTECTED])
def test_protected_routes_refuse_anonymous_and_wrong_token(web: Web, method: str, path: str) -> None:
    for token in (None, "wrong-" + TOKEN):
        with web.client(token) as http:
            response = http.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401, (token is not None, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_probes_answer_without_a_token(web: Web) -> None:
    with web.client(None) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"status": "ready"}


def ran_on(booted: BootedProject, task_id: str) -> list[str]:
    """The queues whose worker logged this task as succeeded."""
    return [q for q in booted.queues if f"[{task_id}] succeeded" in booted.proc(f"worker-{q}").log.read_text()]


def test_enqueued_tasks_run_on_their_queue_worker_and_results_are_readable(web: Web, booted: BootedProject) -> None:
    queues_seen = set()
    with web.client() as http:
        for name, payload in GOOD.items():
            accepted = http.post(f"/tasks/{name}", json=payload)
            assert accepted.status_code == 202, accepted.text
            task_id, queue, status_url = (accepted.json()[key] for key in ("task_id", "queue", "status_url"))
            assert queue in booted.queues and status_url.endswith(f"/results/{task_id}")

            def finished(url: str = status_url) -> dict | None:
                status = http.get(url).json()
                return status if status["state"] in ("SUCCESS", "FAILURE") else None

            result = wait_until(finished, what=f"{name} finishing")
            assert result["state"] == "SUCCESS" and result["result"], result
            # The worker log line follows the stored result; only the worker of the reported queue ran it.
            assert wait_until(lambda task_id=task_id: ran_on(booted, task_id), what="worker log") == [queue]
            queues_seen.add(queue)
    assert queues_seen == set(booted.queues), "the allow-listed examples should cover every queue"


def test_bad_payload_is_422_with_the_field_named(web: Web) -> None:
    with web.client() as http:
        response = http.post("/tasks/orders.process_order", json={**ORDER, "amount": "-5"})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [error["loc"] for error in errors] == [["body", "amount"]], errors
    assert "greater than 0" in errors[0]["msg"]


def test_unknown_task_is_404(web: Web) -> None:
    with web.client() as http:
        response = http.post("/tasks/orders.drop_all", json={})
    assert response.status_code == 404 and "not allow-listed" in response.json()["detail"]


def test_sigterm_is_a_graceful_exit_0(web: Web) -> None:
    # Last in the module: it stops the shared process (pytest keeps a module's tests together per broker).
    assert web.proc.stop(timeout=60) == 0, services.log_tail(web.proc.log)
    log = web.proc.log.read_text(errors="replace")
    assert "Shutting down: Master" in log and "Traceback" not in log
