"""Start real broker servers (Redis, RabbitMQ) as child processes for the tests.

Each server runs in the foreground as a child of the test process, in a new session (so in its own process
group), on a free loopback port, with every file it writes inside the work dir it is given. Tests can then
``kill()`` a broker (SIGKILL, as a crash would) and ``restart()`` it on the same port and data dir.

Typical start times measured on the 2-core dev/CI machine (Debian bookworm):

* Redis 7.0: ~0.05 s until PING answers.
* RabbitMQ 3.10 (Erlang 25, no plugins): ~4 s for a fresh node until an AMQP connection succeeds,
  ~3-3.5 s for a restart after ``kill()``; a graceful ``stop()`` takes ~1 s.

Linux only: the process bookkeeping reads ``/proc``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pytest

REDIS_READY_TIMEOUT = 20.0
RABBITMQ_READY_TIMEOUT = 60.0
# How long a SIGKILLed broker may take to disappear (and free its port) on a loaded machine before that is an error.
KILL_TIMEOUT = 60.0

# Debian package that provides each binary, for the install hint in require().
APT_PACKAGES = {"redis-server": "redis-server", "rabbitmq-server": "rabbitmq-server"}

# Debian's /usr/sbin/rabbitmq-server is a wrapper that, as root, re-runs the real script as the `rabbitmq`
# user from /var/lib/rabbitmq, which drops our environment and cannot write to our root-owned temp dirs.
RABBITMQ_REAL_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")

LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """A broker did not start or did not become ready in time."""


# --- small helpers ---------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require(binary: str) -> str:
    """Return the path of ``binary``; skip the test if it is missing, or fail it when running in CI."""
    path = shutil.which(binary)
    if path:
        return path
    package = APT_PACKAGES.get(binary, binary)
    skip_or_fail(f"{binary} not found on PATH; install it with: apt-get install -y {package}")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with the reason on a developer machine; fail it when CI=true (as .ci/run sets).

    In CI a missing server or tool means the CI setup is broken: that must be red, never a silent skip.
    """
    print(f"\n{reason}", file=sys.stderr)
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file, or a note if it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _read_proc_table() -> dict[int, tuple[int, int]]:
    """Map pid -> (ppid, pgid) for every live, non-zombie process, from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process exited while we were scanning
            continue
        # The command name (field 2) may contain spaces and parentheses, so split after the last ')'.
        state, ppid, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
        # Zombies are dead; this machine's PID 1 does not always reap orphans, so they can linger.
        if state not in ("Z", "X"):
            table[int(entry.name)] = (int(ppid), int(pgid))
    return table


def process_family(leader: int) -> set[int]:
    """Live processes in ``leader``'s process group plus all of its descendants.

    Descendants matter because Erlang's ``erl_child_setup`` calls setsid(), so it and its children
    (inet_gethost, the disk monitor shell) leave the group that killpg() reaches.
    """
    table = _read_proc_table()
    family = {pid for pid, (_, pgid) in table.items() if pgid == leader}
    if leader in table:
        family.add(leader)
    grew = True
    while grew:  # walk down the ppid links until no new child shows up
        children = {pid for pid, (ppid, _) in table.items() if ppid in family} - family
        family |= children
        grew = bool(children)
    return family


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    eventually(lambda: not any(_alive(pid) for pid in pids), timeout)
    return {pid for pid in pids if _alive(pid)}


def listening_pids(port: int) -> dict[int, str]:
    """Processes with a listening TCP socket on ``port`` (any address), as pid -> command line, read from /proc.

    Tells whose server answers on a port: an open port alone may be a dying broker, or another one that took it.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # fields[1] is "ADDR:PORT" in hex, fields[3] the state (0A = LISTEN), fields[9] the socket inode.
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    owners: dict[int, str] = {}
    if not inodes:
        return owners
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        owners[int(entry.name)] = cmdline.strip()
                        break
    return owners


def _describe(pids: set[int]) -> str:
    """``pid (state) command`` for each pid, for error messages about processes that would not go away."""
    parts = []
    for pid in sorted(pids):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            state, cmdline = "gone", ""
        parts.append(f"{pid} ({state}) {cmdline.strip()[:80]}")
    return "; ".join(parts) or "none"


def stop_group(
    popen: subprocess.Popen, sig: signal.Signals = signal.SIGTERM, timeout: float = 60, also: set[int] = frozenset()
) -> int:
    """Stop a process started with start_new_session=True: `sig` to its process group, then up to `timeout` seconds
    for it to exit, then SIGKILL to whatever is left of the group and its descendants (and of `also`, processes seen
    earlier that may have left the group). Returns the leader's exit code.

    What is left after a clean exit is killed too: pool processes of a crashed worker, helpers that called setsid().
    """
    family = process_family(popen.pid) | set(also)
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout)
    _signal_pids({pid for pid in process_family(popen.pid) | family if _alive(pid)}, signal.SIGKILL)
    popen.wait()
    return popen.returncode


def _signal_pids(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS server presents: its certificate and key (PEM), and the CA file a client should trust for it."""

    cert: Path
    key: Path
    ca: Path


# --- the service handle ----------------------------------------------------------------------------------


_REGISTRY: set[Service] = set()


@dataclass(eq=False)  # identity equality, so a Service can live in the registry set
class Service:
    """A running (or stopped) broker process and how to reach it."""

    name: str
    url: str
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    argv: list[str] = field(repr=False)
    env: dict[str, str] = field(repr=False)
    ready_check: Callable[[str], None] = field(repr=False)
    ready_timeout: float = field(repr=False)
    start_seconds: float = 0.0  # how long the last (re)start took until the broker answered

    @property
    def pid(self) -> int:
        """PID of the process group leader (also the group id, thanks to start_new_session)."""
        return self.proc.pid

    def is_running(self) -> bool:
        """True while any process of this broker is alive."""
        return bool(self._family())

    def owns_port(self) -> bool:
        """True if the server listening on ``port`` is one of this broker's processes (not a stranger on it)."""
        return bool(set(listening_pids(self.port)) & self._family())

    def _family(self) -> set[int]:
        if self.proc.poll() is not None and _alive(self.pid):
            return set()  # we reaped our leader, so a live process with its pid is an unrelated newcomer
        return process_family(self.pid)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds. Safe to call twice."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL every process of the broker at once, like a crash (for fault-injection tests)."""
        self._terminate(signal.SIGKILL, 5)

    def restart(self) -> None:
        """Start the broker again with the same port, data dir and settings, and wait until it answers."""
        self.stop()
        _wait_port_free(self.port, KILL_TIMEOUT, self.name)
        self.proc = _spawn(self.argv, self.env, self.log_path)
        _REGISTRY.add(self)
        self.start_seconds = _wait_ready(self)

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        # Snapshot first: once the leader dies its children are re-parented and can no longer be found.
        family = self._family()
        if family:
            # The group id stays valid while any member lives, even after the leader was reaped.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            if sig is signal.SIGKILL:
                _signal_pids(family, sig)  # also reach the members that called setsid()
        if _wait_gone(family, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            _signal_pids(family, signal.SIGKILL)
        # Helpers outside the group (erl_child_setup...) exit on their own once the VM is gone; force it if not.
        _signal_pids(_wait_gone(family, 3), signal.SIGKILL)
        # SIGKILL cannot be refused, but on a loaded machine a large VM takes a while to tear down: wait for the
        # processes themselves (the leader is our child: reap it), with a generous deadline, rather than a fixed pause.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(KILL_TIMEOUT)
        left = _wait_gone(family, KILL_TIMEOUT)
        _REGISTRY.discard(self)
        if left:
            raise ServiceError(
                f"{self.name} on port {self.port}: processes still alive {KILL_TIMEOUT:.0f}s after SIGKILL: "
                f"{_describe(left)}"
            )


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv,
            env=env,
            cwd=log_path.parent,  # inside the work dir, so a stray relative path cannot land elsewhere
            stdin=subprocess.DEVNULL,  # never let a broker read the test runner's terminal
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop()/kill() reach the whole tree
        )


def _wait_port_free(port: int, timeout: float, name: str) -> None:
    """Wait until nothing listens on ``port``; raise naming the holder if something still does after ``timeout``."""
    deadline = time.monotonic() + timeout
    while holders := listening_pids(port):
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{name}: port {port} is still held after {timeout:.0f}s by "
                + "; ".join(f"{pid} {cmd[:80]}" for pid, cmd in holders.items())
            )
        time.sleep(0.1)


def _wait_ready(service: Service) -> float:
    """Poll ``service.ready_check`` until it passes and the port is held by this broker's own processes; return the
    seconds it took. Stop and raise on failure."""
    started = time.monotonic()
    deadline = started + service.ready_timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            service.ready_check(service.url)
        except Exception as exc:
            last_error = exc
        else:
            # The answer must come from our process, not from a dying predecessor or a stranger on the port.
            if service.proc.poll() is None and service.owns_port():
                return time.monotonic() - started
            last_error = ServiceError(f"port {service.port} answered, held by {listening_pids(service.port)}")
        if service.proc.poll() is not None:  # fail fast: no point polling a process that already died
            last_error = ServiceError(f"exited with code {service.proc.returncode}")
            break
        time.sleep(0.05)
    waited = time.monotonic() - started
    service.stop(timeout=5)  # a half-started broker must not outlive the failed test
    raise ServiceError(
        f"{service.name} on port {service.port} was not ready after {waited:.1f}s "
        f"(last error: {last_error!r}); last lines of {service.log_path}:\n{log_tail(service.log_path)}"
    )


def _launch(
    *,
    name: str,
    url: str,
    port: int,
    data_dir: Path,
    log_path: Path,
    argv: list[str],
    env: dict[str, str],
    ready_check: Callable[[str], None],
    ready_timeout: float,
) -> Service:
    """Spawn the process, register it for atexit cleanup and wait until it answers."""
    service = Service(
        name=name,
        url=url,
        port=port,
        data_dir=data_dir,
        log_path=log_path,
        proc=_spawn(argv, env, log_path),
        argv=argv,
        env=env,
        ready_check=ready_check,
        ready_timeout=ready_timeout,
    )
    _REGISTRY.add(service)
    service.start_seconds = _wait_ready(service)
    return service


@atexit.register
def _stop_all() -> None:
    """Last resort: stop whatever a test forgot, so no broker outlives the test run."""
    for service in list(_REGISTRY):
        with contextlib.suppress(Exception):
            service.stop(timeout=5)


# --- Redis -----------------------------------------------------------------------------------------------


def _redis_ping(url: str, *, tls: bool = False) -> None:
    import redis  # local import: only needed once a Redis is actually started

    # Over TLS the check asks "is it up", not "is it trusted": tests start servers with bad certificates on purpose.
    insecure = {"ssl_cert_reqs": "none", "ssl_check_hostname": False} if tls else {}
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, **insecure)
    try:
        client.ping()
    finally:
        client.close()


def start_redis(
    workdir: Path, *, appendonly: bool = True, password: str | None = None, tls: TlsFiles | None = None
) -> Service:
    """Start ``redis-server`` on a free port with all its files in ``workdir``; return once PING answers.

    With ``appendonly`` (the default) writes go to an AOF, so data survives ``kill()`` + ``restart()``:
    Redis write()s the AOF before replying, and SIGKILL does not lose what is in the page cache.
    With ``tls`` the port speaks TLS only (no plain port), presenting ``tls.cert``; the URL is rediss://.
    """
    binary = require("redis-server")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "redis.log"
    argv = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--appendonly", "yes" if appendonly else "no",
        "--save", "",  # no RDB snapshots: the AOF (or nothing) is the only persistence
        "--daemonize", "no",  # stay in the foreground so the Popen is the server itself
        "--logfile", str(log_path),  # absolute, so it does not depend on when redis chdirs to --dir
    ]  # fmt: skip
    auth = ""
    if password is not None:
        argv += ["--requirepass", password]
        auth = f":{quote(password, safe='')}@"
    scheme = "redis"
    if tls is not None:
        # The later --port 0 wins: no plain-text port at all, so nothing can reach this Redis without TLS.
        argv += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert)]
        argv += ["--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
        scheme = "rediss"
    return _launch(
        name="redis",
        url=f"{scheme}://{auth}127.0.0.1:{port}/0",
        port=port,
        data_dir=workdir,
        log_path=log_path,
        argv=argv,
        env=dict(os.environ),
        ready_check=functools.partial(_redis_ping, tls=tls is not None),
        ready_timeout=REDIS_READY_TIMEOUT,
    )


# --- RabbitMQ --------------------------------------------------------------------------------------------


def _amqp_connect(url: str) -> None:
    import ssl

    import kombu  # local import: only needed once a RabbitMQ is actually started

    # amqps: "is it up", not "is it trusted" (tests start nodes with bad certificates on purpose).
    options = {"cert_reqs": ssl.CERT_NONE} if url.startswith("amqps://") else False
    with kombu.Connection(url, connect_timeout=2, ssl=options) as conn:
        # max_retries=0: one attempt; connect() would retry once after a 2 s sleep, slowing every start.
        conn.ensure_connection(max_retries=0)


def _rabbitmq_script() -> str:
    """The real rabbitmq-server script, bypassing Debian's user-switching wrapper when it is there."""
    if RABBITMQ_REAL_SCRIPT.is_file():
        return str(RABBITMQ_REAL_SCRIPT)
    return require("rabbitmq-server")


def _rabbitmq_env(workdir: Path, port: int, dist_port: int) -> dict[str, str]:
    """Environment for a private RabbitMQ node: own name, ports, cookie and files, nothing from /etc."""
    # Drop inherited RABBITMQ_* settings (a developer's shell, a CI image) so the node is the same everywhere.
    env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
    env.update(
        {
            "HOME": str(workdir),  # erl creates a private ~/.erlang.cookie here
            "RABBITMQ_NODENAME": f"test-{port}@localhost",  # unique per port; same on restart, so same mnesia dir
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),  # the default (AMQP port + 20000) may be taken
            "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(workdir / "log"),
            "RABBITMQ_LOGS": "-",  # log to stdout, which _spawn() appends to log_path: one file to read
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),  # absent on purpose
            "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),  # keeps /etc/rabbitmq/*.conf out
        }
    )
    return env


def _write_rabbitmq_files(workdir: Path, tls: TlsFiles | None = None, tls_port: int = 0) -> None:
    # An empty plugin list: no management plugin, so the node starts in a few seconds.
    (workdir / "enabled_plugins").write_text("[].\n")
    # guest/guest may log in from 127.0.0.1 by default, so the config only needs to exist.
    config = "# Test node: defaults only; ports and paths come from the environment.\n"
    if tls is not None:
        # A TLS listener presenting tls.cert; clients are not asked for a certificate.
        config += (
            f"listeners.ssl.default = 127.0.0.1:{tls_port}\n"
            f"ssl_options.certfile = {tls.cert}\nssl_options.keyfile = {tls.key}\nssl_options.cacertfile = {tls.ca}\n"
            "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n"
        )
    (workdir / "rabbitmq.conf").write_text(config)
    (workdir / "rabbitmq-env.conf").write_text("# Empty on purpose: the environment of the test process decides.\n")


def start_rabbitmq(workdir: Path, *, tls: TlsFiles | None = None) -> Service:
    """Start a private RabbitMQ node on free ports with all its files in ``workdir``.

    Returns once an AMQP connection as guest succeeds; this takes ~4 s on the 2-core machine.
    Runs as root as well: the real script is started directly instead of Debian's wrapper.
    epmd (port 4369) is started by erl as a shared daemon and is left running on purpose.
    With ``tls`` the node also listens for AMQP over TLS (presenting ``tls.cert``); the URL and port are that
    listener's (amqps://), the plain listener stays on a port no test is given.
    """
    script = _rabbitmq_script()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port, dist_port = free_port(), free_port()
    while dist_port == port:  # two quick calls can in theory return the same port
        dist_port = free_port()
    amqp_port, url = port, f"amqp://guest:guest@127.0.0.1:{port}//"
    if tls is not None:
        amqp_port = free_port()
        while amqp_port in (port, dist_port):
            amqp_port = free_port()
        url = f"amqps://guest:guest@127.0.0.1:{port}//"
    _write_rabbitmq_files(workdir, tls, port)
    return _launch(
        name="rabbitmq",
        url=url,
        port=port,
        data_dir=workdir / "mnesia",
        log_path=workdir / "log" / "rabbitmq.log",
        argv=[script],
        env=_rabbitmq_env(workdir, amqp_port, dist_port),
        ready_check=_amqp_connect,
        ready_timeout=RABBITMQ_READY_TIMEOUT,
    )


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str | Callable[[], str] = "condition") -> Any:
    """Poll `predicate` until it returns something true, and return that; fail after `timeout` seconds.

    A deadline, not a sleep: on a busy 2-core machine a condition may take longer, and it returns as soon as it holds.
    `what` names the condition in the failure (a callable is asked then, e.g. for a log tail).
    """
    deadline = time.monotonic() + timeout
    while True:
        asked = time.monotonic()
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what() if callable(what) else what}: not within {timeout}s")
        # As long a pause as the check took (at least 0.1 s, at most 2 s): a check that runs a process (a probe,
        # doctor, a producer program) then uses at most half a core, and leaves the other half to what it waits for.
        time.sleep(min(2.0, max(0.1, time.monotonic() - asked)))


def eventually(condition: Callable[[], Any], timeout: float) -> bool:
    """Whether `condition` holds within `timeout` seconds (for a figure to print, where wait_until would fail)."""
    try:
        wait_until(condition, timeout)
    except AssertionError:
        return bool(condition())
    return True
