"""Boot tier for request body limits: what anyone who can reach bin/web, Flower or the exporter can make them hold.

Runs bin/web (gunicorn, native ASGI worker, two workers), bin/flower and bin/metrics against the session's booted
Redis project. Oversized
bodies (200 MB, with a declared Content-Length and chunked, anonymous and with the token) are produced from a
generator over raw sockets: the client never holds more than one 64 KiB block, and it stops sending as soon as the
server answers or closes. Resident memory is read from /proc (for bin/web: the gunicorn master plus its workers).
"""

import functools
import json
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import services
from booted import BootedProject, Proc, running_web
from services import process_family, wait_until

# The limits do not depend on the broker: the session's Redis project is enough.
pytestmark = [pytest.mark.boot, pytest.mark.parametrize("booted", ["redis"], indirect=True, ids=["broker=redis"])]
TOKEN = secrets.token_urlsafe(24)
ORDER = {"order_id": "o-limits-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}
MB = 1_000_000
OVERSIZE = 200 * MB
BLOCK = 64 * 1024
# The web processes may grow by less than this across all oversized requests at once (the incident: gigabytes).
MAX_GROWTH = 20 * MB
# A 422 for any payload stays below this: validation errors never echo a large input back.
MAX_ERROR_RESPONSE = 4096


def family_rss(leader: int) -> int:
    """Resident bytes of a process and its children (gunicorn's master and workers), from /proc/<pid>/status."""
    total = 0
    for pid in process_family(leader):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(found.group(1)) * 1024 if found else 0
    return total


@dataclass
class Web:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return family_rss(self.proc.popen.pid)


@dataclass
class Answer:
    label: str
    status: int
    seconds: float
    sent: int
    body: bytes

    def __str__(self) -> str:
        return f"{self.label}: {self.status} after {self.seconds:.2f}s, {self.sent / MB:.1f} MB sent"


@pytest.fixture(scope="module")
def web(booted: BootedProject) -> Iterator[Web]:
    with running_web(booted, "web-limits", TOKEN) as (proc, port):
        yield Web(proc, port)


def blocks(total: int, chunked: bool) -> Iterator[bytes]:
    """A JSON-looking body of `total` bytes, one block at a time (never the whole body in memory)."""
    head = b'{"order_id": "'
    yield (b"%x\r\n%s\r\n" % (len(head), head)) if chunked else head
    remaining = total - len(head)
    filler = b"a" * BLOCK
    while remaining > 0:
        block = filler[: min(BLOCK, remaining)]
        remaining -= len(block)
        yield (b"%x\r\n%s\r\n" % (len(block), block)) if chunked else block
    if chunked:
        yield b"0\r\n\r\n"


def read_response(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length framed, as the app's errors are)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length and len(body) < int(length.group(1)):
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
    except ConnectionResetError:
        head, _, body = data.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(status.group(1)) if status else 0), body


def post_oversize(
    port: int, *, token: str | None, chunked: bool, total: int = OVERSIZE, path: str = "/tasks/orders.process_order"
) -> Answer:
    """POST `total` bytes to `path`; stop sending once the server answers. Never allocates the body."""
    label = f"{'token' if token else 'anonymous'} {'chunked' if chunked else 'Content-Length'}"
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n"
        sock.sendall(head.encode() + b"\r\n")
        sock.setblocking(False)
        sent = 0
        pending = memoryview(b"")
        body = blocks(total, chunked)
        while True:
            if not pending:
                pending = memoryview(next(body, b""))
                if not pending:
                    break
            readable, writable, _ = select.select([sock], [sock], [], 120)
            if readable:
                break  # the server answered (or closed) before taking the whole body
            assert writable, f"{label}: the server neither read nor answered for 120s"
            try:
                n = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += n
            pending = pending[n:]
        status, reply = read_response(sock, timeout=120)
    finally:
        sock.close()
    return Answer(label, status, time.monotonic() - start, sent, reply)


def settle(rss) -> int:
    """RSS once it stops moving (allocator returns, worker heartbeats): the lowest of a few samples."""
    samples = []
    for _ in range(5):
        samples.append(rss())
        time.sleep(0.3)
    return min(samples)


def flood(rss, requests) -> tuple[list[Answer], int, int, int]:
    """Run the requests at once while sampling `rss`; returns the answers and RSS before, at peak and after."""
    before = settle(rss)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answers: list[Answer] = []
    threads = [threading.Thread(target=lambda r=r: answers.append(r())) for r in requests]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
    finally:
        done.set()
        sampler.join()
    after = settle(rss)
    for answer in sorted(answers, key=lambda a: a.label):
        print(f"  {answer} {answer.body[:120]!r}")
    print(
        f"  RSS before {before / MB:.1f} MB, peak {peak / MB:.1f} MB (+{(peak - before) / MB:.1f}), "
        f"after {after / MB:.1f} MB (+{(after - before) / MB:.1f})"
    )
    assert len(answers) == len(requests), "a request did not finish"
    assert peak - before < MAX_GROWTH, f"grew by {(peak - before) / MB:.1f} MB while refusing"
    assert after - before < MAX_GROWTH, f"kept {(after - before) / MB:.1f} MB"
    return answers, before, peak, after


def test_oversized_bodies_are_refused_before_they_are_read(web: Web) -> None:
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        for _ in range(6):  # both workers have imported and served everything once
            assert http.post("/tasks/orders.process_order", json=ORDER).status_code == 202
    kinds = [(token, chunked) for token in (None, TOKEN) for chunked in (False, True)] * 2
    print(f"\n{len(kinds)} concurrent {OVERSIZE // MB} MB POSTs to bin/web:")
    requests = [lambda t=t, c=c: post_oversize(web.port, token=t, chunked=c) for t, c in kinds]
    answers, *_ = flood(web.rss, requests)
    for answer in answers:
        expected = 413 if answer.label.startswith("token") else 401
        assert answer.status == expected, f"{answer} {answer.body[:300]!r}"
        assert answer.sent < OVERSIZE // 10, f"{answer}: the server read most of the body before answering"

    # And the next ordinary request is served.
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        accepted = http.post("/tasks/orders.process_order", json=ORDER)
    assert accepted.status_code == 202, accepted.text


def test_anonymous_callers_are_refused_before_their_body_is_read(web: Web) -> None:
    """A small declared body that never comes: only a server that decides from the headers can answer."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", web.port), timeout=30) as sock:
        sock.sendall(
            b"POST /tasks/orders.process_order HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        try:
            status, body = read_response(sock, timeout=20)
        except TimeoutError:
            status, body = 0, b"(no answer: the server waits for the body)"
    print(f"\nanonymous, body not sent: {status} after {time.monotonic() - started:.2f}s {body!r}")
    assert status == 401, body


def test_413_names_the_limit_in_one_line(web: Web) -> None:
    answer = post_oversize(web.port, token=TOKEN, chunked=False, total=50 * MB)
    print(f"\n{answer} {answer.body!r}")
    assert answer.status == 413
    detail = json.loads(answer.body)["detail"]
    assert "\n" not in detail and "CELERY_MAX_PAYLOAD_BYTES" in detail, detail


def test_a_large_invalid_payload_gets_a_short_422(web: Web) -> None:
    # Under the size limit, and wrong in every way it can be: a long bad value and thousands of unknown fields.
    payload = {**ORDER, "order_id": "!" * 400_000, **{f"extra_{i}": i for i in range(20_000)}}
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        started = time.monotonic()
        response = http.post("/tasks/orders.process_order", json=payload)
        seconds = time.monotonic() - started
    size = len(json.dumps(payload)) / MB
    print(f"\n{size:.2f} MB invalid payload: {response.status_code}, {len(response.content)} bytes in {seconds:.2f}s")
    print(f"  {response.text[:600]}")
    assert response.status_code == 422
    assert len(response.content) < MAX_ERROR_RESPONSE
    errors = response.json()["detail"]
    assert errors[0]["loc"] == ["body", "order_id"], errors[0]


def test_a_body_that_is_not_json_gets_a_short_422(web: Web) -> None:
    """curl -d's default form encoding and text/plain: a 422 saying what was expected, not a 500."""
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        for content_type, content in (
            ("application/x-www-form-urlencoded", "order_id=o-1&amount=5"),
            ("text/plain", "EURUSD please"),
            ("text/plain", "x" * 500_000),
        ):
            response = http.post("/tasks/orders.process_order", content=content, headers={"Content-Type": content_type})
            print(f"\n{content_type} ({len(content)} bytes): {response.status_code} {response.text[:300]}")
            assert response.status_code == 422 and len(response.content) < MAX_ERROR_RESPONSE, response.text[:300]


def raw_get(port: int, headers: list[str]) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
        sock.sendall(head.encode())
        return read_response(sock, timeout=30)


def test_too_many_or_too_long_headers_are_refused(web: Web) -> None:
    """Anyone can send headers before the token is checked: gunicorn.conf.py bounds their number and size."""
    many = raw_get(web.port, [f"X-Filler-{i}: {'a' * 100}" for i in range(40)])
    long = raw_get(web.port, [f"X-Filler: {'a' * 5000}"])
    usual = raw_get(web.port, [f"Authorization: Bearer {TOKEN}", "X-Forwarded-For: 10.0.0.1, 10.0.0.2"])
    print(f"\n40 headers: {many[0]}, one 5000-byte header: {long[0]}, usual headers: {usual[0]}")
    assert (many[0], long[0], usual[0]) == (431, 431, 200), (many, long, usual)


def test_deeply_nested_json_is_refused_without_harm(web: Web) -> None:
    depth = 100_000
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        nested = "[" * depth + "]" * depth
        json_type = {"Content-Type": "application/json"}
        response = http.post("/tasks/orders.process_order", content=nested, headers=json_type)
        print(f"\n{depth}-deep JSON: {response.status_code} {response.text[:200]}")
        assert response.status_code in (400, 422) and len(response.content) < MAX_ERROR_RESPONSE
        assert http.get("/healthz").status_code == 200


def wait_for_port(proc: Proc, port: int) -> None:
    def listening() -> bool:
        assert proc.popen.poll() is None, f"{proc.name} exited {proc.popen.returncode}:\n{services.log_tail(proc.log)}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return False
        return True

    wait_until(listening, timeout=90, what=f"{proc.name} listening on {port}")


def test_flower_and_the_exporter_hold_no_large_body(booted: BootedProject, stopped_afterwards: list[Proc]) -> None:
    """Flower checks its login only after Tornado has read the body; the exporter never reads one (GET only).

    50 MB: under Tornado's own default limit (100 MB), so only Flower's configured limit can refuse it early."""
    total = 50 * MB
    flower_port, metrics_port = services.free_port(), services.free_port()
    env = {"FLOWER_PORT": str(flower_port), "FLOWER_ADDRESS": "127.0.0.1", "METRICS_PORT": str(metrics_port)}
    flower = booted.start("flower-limits", [str(booted.path / "bin" / "flower")], env=env)
    metrics = booted.start("metrics-limits", [str(booted.path / "bin" / "metrics")], env=env)
    stopped_afterwards += [flower, metrics]
    wait_for_port(flower, flower_port)
    wait_for_port(metrics, metrics_port)
    for proc, port, path, refused in (
        (flower, flower_port, "/api/task/async-apply/orders.process_order", {400, 401}),
        (metrics, metrics_port, "/metrics", {405}),
    ):
        print(f"\n4 concurrent anonymous {total // MB} MB POSTs to {proc.name} {path}:")
        requests = [
            functools.partial(post_oversize, port, token=None, chunked=c, total=total, path=path)
            for c in (False, True, False, True)
        ]
        answers, *_ = flood(lambda pid=proc.popen.pid: family_rss(pid), requests)
        for answer in answers:
            assert answer.status in refused, f"{answer} {answer.body[:300]!r}"
            # Socket buffers take a few MB before a server reads anything; a server reading the body takes all of it.
            assert answer.sent < total // 2, f"{answer}: {proc.name} read most of the body"
