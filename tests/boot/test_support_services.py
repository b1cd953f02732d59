"""Tests for tests/support/services.py against real redis-server and rabbitmq-server processes (no mocks)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import redis
from services import (
    Service,
    ServiceError,
    _launch,
    _redis_ping,
    free_port,
    listening_pids,
    process_family,
    require,
    start_rabbitmq,
    start_redis,
)


def _assert_gone(service: Service) -> None:
    """Nothing of the broker is left: no process in its group or below it, and none of them listens on its port.

    The port is checked by owner, not by "does it answer": on a busy machine another test may bind a freed port.
    """
    assert not service.is_running()
    assert process_family(service.pid) == set()
    assert not service.owns_port(), f"port {service.port} still held by {listening_pids(service.port)}"


# --- helpers ---------------------------------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_require_finds_a_binary() -> None:
    assert require("sh").endswith("/sh")


def test_require_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y no-such-broker"):
        require("no-such-broker")


def test_require_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    # Caught as the common base of skip and fail: a skip that escaped pytest.raises would show as skipped, not red.
    with pytest.raises(BaseException) as raised:
        require("no-such-broker")
    assert raised.type is pytest.fail.Exception, f"CI=true must fail, got {raised.typename}: {raised.value}"
    assert "no-such-broker not found" in str(raised.value)


# --- Redis -----------------------------------------------------------------------------------------------


@pytest.fixture
def redis_service(tmp_path: Path) -> Iterator[Service]:
    service = start_redis(tmp_path / "redis")
    yield service
    service.stop()


def test_redis_set_get(redis_service: Service) -> None:
    with redis.Redis.from_url(redis_service.url) as client:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
    print(f"redis ready after {redis_service.start_seconds:.3f}s")


def test_redis_kill_restart_keeps_aof_data(redis_service: Service) -> None:
    with redis.Redis.from_url(redis_service.url) as client:
        client.set("survivor", "yes")
    old_pid, old_port = redis_service.pid, redis_service.port

    redis_service.kill()
    _assert_gone(redis_service)

    redis_service.restart()
    assert redis_service.port == old_port
    assert redis_service.pid != old_pid
    with redis.Redis.from_url(redis_service.url) as client:
        assert client.get("survivor") == b"yes"  # replayed from the AOF in the same data dir


def test_redis_stop_is_idempotent(redis_service: Service) -> None:
    redis_service.stop()
    _assert_gone(redis_service)
    assert redis_service.proc.returncode is not None  # the leader was reaped
    redis_service.stop()  # second call is a no-op
    redis_service.kill()  # so is kill() on a stopped service


def test_ready_means_our_process_holds_the_port(tmp_path: Path) -> None:
    """A server that answers on the port but is not ours (a dying predecessor, another test's broker) is not "ready".

    Here a real Redis holds the port and the process started is one that never listens: answering PING is not enough.
    """
    stranger = start_redis(tmp_path / "stranger", appendonly=False)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceError, match=f"port {stranger.port} answered, held by"):
            _launch(
                name="impostor",
                url=stranger.url,
                port=stranger.port,
                data_dir=tmp_path,
                log_path=tmp_path / "impostor.log",
                argv=["sleep", "60"],
                env={},
                ready_check=_redis_ping,
                ready_timeout=2,
            )
        print(f"refused after {time.monotonic() - started:.1f}s: the port answered, but from {stranger.pid}")
    finally:
        stranger.stop()


def test_redis_password(tmp_path: Path) -> None:
    service = start_redis(tmp_path / "redis", password="s3cret/pw", appendonly=False)
    try:
        assert service.url == f"redis://:s3cret%2Fpw@127.0.0.1:{service.port}/0"  # password URL-quoted
        with redis.Redis.from_url(service.url) as client:
            assert client.ping()
        with redis.Redis(port=service.port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.get("x")
    finally:
        service.stop()
    _assert_gone(service)


# --- RabbitMQ --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Module scope: a node takes seconds to boot, so all RabbitMQ tests share one.
    service = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq"))
    yield service
    service.stop()


@pytest.fixture
def rabbitmq(rabbitmq_node: Service) -> Service:
    """The shared node, running: a test that failed with it killed must not fail the next one too."""
    if not rabbitmq_node.is_running():
        rabbitmq_node.restart()
    return rabbitmq_node


def _round_trip(url: str, queue_name: str, body: dict[str, str]) -> object:
    with kombu.Connection(url, connect_timeout=5) as conn:
        queue = kombu.Queue(queue_name, routing_key=queue_name)
        with conn.Producer() as producer:
            producer.publish(body, routing_key=queue_name, declare=[queue], serializer="json")
        with conn.SimpleQueue(queue) as simple:
            message = simple.get(timeout=5)
            message.ack()
            return message.payload


def test_rabbitmq_message_round_trip(rabbitmq: Service) -> None:
    print(f"rabbitmq ready after {rabbitmq.start_seconds:.2f}s")
    assert rabbitmq.url == f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}//"
    assert _round_trip(rabbitmq.url, "roundtrip", {"hello": "world"}) == {"hello": "world"}


def test_rabbitmq_kill_restart_same_port(rabbitmq: Service) -> None:
    old_port = rabbitmq.port
    rabbitmq.kill()
    _assert_gone(rabbitmq)

    rabbitmq.restart()
    print(f"rabbitmq ready again after {rabbitmq.start_seconds:.2f}s")
    assert rabbitmq.port == old_port
    assert _round_trip(rabbitmq.url, "after-restart", {"n": "2"}) == {"n": "2"}


def test_rabbitmq_stop_leaves_no_process(rabbitmq: Service) -> None:
    # Runs last in this module: stopping the shared node here is part of what is tested.
    family = process_family(rabbitmq.pid)  # snapshot, including helpers that left the process group
    assert any("beam.smp" in _cmdline(pid) for pid in family)

    started = time.monotonic()
    rabbitmq.stop()
    print(f"rabbitmq graceful stop took {time.monotonic() - started:.1f}s")
    _assert_gone(rabbitmq)
    assert [pid for pid in family if _state(pid) not in ("gone", "Z")] == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
