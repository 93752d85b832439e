"""A real Jasmin SMS Gateway 0.11.0 for the SMPP integration tests.

Jasmin plays the SMSC our sender binds to, and forwards to an upstream SMSC (the tests' own,
``tests/smsc.py``) the way a real aggregator forwards to an operator. It needs Redis and
RabbitMQ; all three are started here by hand, on loopback, on free ports, in a temporary
directory, and stopped at the end (Debian's policy-rc.d keeps the packaged services down in
containers, and a shared system broker would leak state between runs anyway).

``scripts/setup-jasmin.sh`` installs the pieces (Jasmin in its own venv, ``.venv-jasmin``).
When they are missing the tests skip with the install hint, except under ``CI=true``, where a
skip would hide a broken set-up and so fails instead.

What had to be worked around in Jasmin 0.11.0:

- ``jasmind`` takes the fixed lock ``/tmp/jasmind.lock`` (one Jasmin per machine, and a lock
  left behind by a killed run blocks the next). It is started through a launcher that points
  the lock into this run's directory, so runs never meet and never leave a stale lock.
- The AMQP spec ``amqp0-9-1.xml`` is missing from the wheel; ``setup-jasmin.sh`` copies
  txAMQP's ``amqp0-9-1.stripped.xml`` into the venv and ``jasmin.cfg`` points at it.
- Delivery receipts towards an SMPP user need the DLR lookup and DLR thrower services, which
  ``jasmind`` leaves to separate daemons unless told ``--enable-dlr-lookup --enable-dlr-thrower``.
- An upstream connector throttles to 1 submit/s by default: provisioned with no limit.
- MT waits in RabbitMQ until the upstream connector is bound: start-up waits for ``BOUND_TRX``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
JASMIN_VENV = REPO / ".venv-jasmin"
JASMIN_PYTHON = JASMIN_VENV / "bin" / "python"
AMQP_SPEC = JASMIN_VENV / "etc" / "jasmin" / "resource" / "amqp0-9-1.xml"
REDIS_SERVER = Path("/usr/bin/redis-server")
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = Path("/usr/bin/epmd")
LOOPBACK = "127.0.0.1"
INSTALL_HINT = (
    "run `bash scripts/setup-jasmin.sh` (as root it installs redis-server and rabbitmq-server; "
    "otherwise `sudo apt-get install redis-server rabbitmq-server` first)"
)

# Starts jasmind with its machine-wide lock moved into this run's directory (argv[1]).
_LAUNCHER = """
import runpy, sys
import lockfile
lock_path = sys.argv.pop(1)
real_file_lock = lockfile.FileLock
lockfile.FileLock = lambda _path, *args, **kwargs: real_file_lock(lock_path, *args, **kwargs)
sys.argv[0] = "jasmind"
runpy.run_module("jasmin.bin.jasmind", run_name="__main__")
"""

_TELNET_COMMAND = re.compile(rb"\xff[\xfb-\xfe].|\xff\xfa.*?\xff\xf0|\xff[\xf0-\xfa]", re.DOTALL)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>c78]")

T = TypeVar("T")


class JasminError(RuntimeError):
    """Jasmin or one of its daemons did not come up, or refused a provisioning command."""


@dataclass(frozen=True)
class JasminAccount:
    """An SMPP user provisioned in Jasmin: what an ESME binds with."""

    uid: str
    system_id: str
    password: str


@dataclass(frozen=True)
class Upstream:
    """Where Jasmin's client connector binds: the SMSC behind Jasmin."""

    host: str
    port: int
    system_id: str
    password: str


def missing_pieces() -> list[str]:
    """What `scripts/setup-jasmin.sh` has not installed yet (empty when all is there)."""
    required = [REDIS_SERVER, RABBITMQ_SERVER, EPMD, JASMIN_PYTHON, AMQP_SPEC]
    return [str(path) for path in required if not path.exists()]


def skip_or_fail_when_missing() -> None:
    """Skip the calling tests when Jasmin is not installed; under CI=true that is a failure."""
    missing = missing_pieces()
    if not missing:
        return
    message = f"Jasmin peer not installed (missing {', '.join(missing)}): {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


class _Daemon:
    """A child process in its own process group, so stopping it stops all it spawned."""

    def __init__(self, name: str, argv: list[str], log: Path, **popen: Any) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **popen,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise JasminError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
                return
            time.sleep(0.05)
        raise JasminError(f"{self.name} did not listen on {port} in {timeout}s:\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # Whatever the group leader left behind (beam's helpers) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)


class JCli:
    """Jasmin's telnet console, spoken over a plain socket (telnetlib is deprecated).

    jCli echoes keystrokes and draws prompts with terminal escapes; a command's answer is
    everything after its echo up to the next prompt (``jcli : `` or ``> `` inside a session).
    """

    PROMPTS = ("jcli : ", "> ")

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self._socket = socket.create_connection((LOOPBACK, port), timeout)
        self._timeout = timeout
        self._buffer = b""
        # jCli draws no prompt after its greeting until it gets a line; an empty one is harmless.
        self._socket.sendall(b"\r\n")
        self._read_until_prompt()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.sendall(b"quit\r\n")
        self._socket.close()

    def __enter__(self) -> JCli:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, line: str) -> str:
        """Type one line; returns what jCli printed in answer (without the echo or prompt)."""
        self._socket.sendall(line.encode() + b"\r\n")
        answer = self._read_until_prompt()
        if answer.startswith(line):
            answer = answer[len(line) :]
        return answer.strip()

    def run(self, lines: list[str]) -> str:
        """Type several lines; raise on any answer that tells of a failure."""
        answers = []
        for line in lines:
            answer = self.send(line)
            if re.search(r"unknown|error|fail|invalid|must set|cannot", answer, re.IGNORECASE):
                raise JasminError(f"jCli refused {line!r}: {answer}")
            answers.append(answer)
        return "\n".join(answers)

    def _read_until_prompt(self) -> str:
        deadline = time.monotonic() + self._timeout
        while True:
            text = self._clean(self._buffer)
            if text.endswith(self.PROMPTS):
                self._buffer = b""
                for prompt in self.PROMPTS:
                    if text.endswith(prompt):
                        return text[: -len(prompt)]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JasminError(f"jCli gave no prompt; last output: {text[-300:]!r}")
            self._socket.settimeout(remaining)
            chunk = self._socket.recv(65536)
            if not chunk:
                raise JasminError(f"jCli closed the connection; last output: {text[-300:]!r}")
            self._buffer += chunk

    @staticmethod
    def _clean(raw: bytes) -> str:
        text = _TELNET_COMMAND.sub(b"", raw).decode("utf-8", errors="replace")
        return _ANSI_ESCAPE.sub("", text).replace("\r", "")


@dataclass(frozen=True)
class JasminPeer:
    """A running, provisioned Jasmin: where to bind and who to bind as."""

    host: str
    smpp_port: int
    jcli_port: int
    user: JasminAccount
    throttled_user: JasminAccount
    connector_id: str
    workdir: Path

    def jcli(self, *lines: str) -> str:
        with JCli(self.jcli_port) as console:
            return console.run(list(lines))

    def connector_state(self) -> str:
        """The upstream connector's session state as jCli lists it (``BOUND_TRX`` when up)."""
        listing = self.jcli("smppccm -l")
        for line in listing.splitlines():
            fields = line.lstrip("#").split()
            if fields and fields[0] == self.connector_id and len(fields) >= 3:
                return fields[2]
        raise JasminError(f"connector {self.connector_id} not listed:\n{listing}")

    def wait_connector_bound(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.connector_state()
            if state == "BOUND_TRX":
                return
            time.sleep(0.1)
        raise JasminError(
            f"upstream connector still {state} after {timeout}s; see {self.workdir}/log"
        )


def _jasmin_config(*, spec: Path, log_dir: Path, store: Path, ports: dict[str, int]) -> str:
    local = f"bind = {LOOPBACK}"
    return f"""\
[smpp-server]
id = mcdaemon_tests
{local}
port = {ports["smpp"]}
log_file = {log_dir}/default-smpps.log

[smpp-server-pb]
{local}
port = {ports["smpp_pb"]}

[smpp-server-pb-client]
host = {LOOPBACK}
port = {ports["smpp_pb"]}

[client-management]
{local}
port = {ports["client_management"]}
store_path = {store}

[router]
{local}
port = {ports["router"]}
store_path = {store}

[jcli]
{local}
port = {ports["jcli"]}
authentication = False

[http-api]
{local}
port = {ports["http"]}

[interceptor-client]
host = {LOOPBACK}
port = {ports["interceptor"]}

[amqp-broker]
host = {LOOPBACK}
port = {ports["amqp"]}
spec = {spec}
connection_loss_retry_delay = 1

[redis-client]
host = {LOOPBACK}
port = {ports["redis"]}
dbid = 0

[dlr]
dlr_lookup_retry_delay = 1

[dlr-thrower]
retry_delay = 1

[deliversm-thrower]
retry_delay = 1
"""


def _start_redis(workdir: Path, port: int) -> _Daemon:
    argv = [
        str(REDIS_SERVER),
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    return _Daemon("redis-server", argv, workdir / "log" / "redis.log")


def _rabbitmq_env(workdir: Path, amqp_port: int, dist_port: int, epmd_port: int) -> dict[str, str]:
    base = workdir / "rabbitmq"
    (base / "home").mkdir(parents=True)
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = {LOOPBACK}:{amqp_port}\nlog.console = false\nlog.file.level = warning\n"
    )
    (base / "rabbitmq-env.conf").write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
    env.update(
        HOME=str(base / "home"),  # the Erlang cookie lands here
        ERL_EPMD_PORT=str(epmd_port),
        ERL_EPMD_ADDRESS=LOOPBACK,
        RABBITMQ_NODENAME=f"mcdaemon-tests-{amqp_port}@localhost",
        RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
        RABBITMQ_NODE_PORT=str(amqp_port),
        RABBITMQ_DIST_PORT=str(dist_port),
        RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
        RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
        RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
        RABBITMQ_LOG_BASE=str(workdir / "log"),
        RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
    )
    return env


def _provision(
    jcli_port: int,
    upstream: Upstream,
    user: JasminAccount,
    throttled_user: JasminAccount,
    connector_id: str,
) -> None:
    group = "mcdaemon"
    with JCli(jcli_port) as console:
        console.run(["group -a", f"gid {group}", "ok"])
        for account, extra in (
            (user, []),
            (throttled_user, ["mt_messaging_cred quota smpps_throughput 1"]),
        ):
            console.run(
                [
                    "user -a",
                    f"uid {account.uid}",
                    f"gid {group}",
                    f"username {account.system_id}",
                    f"password {account.password}",
                    *extra,
                    "ok",
                ]
            )
        console.run(
            [
                "smppccm -a",
                f"cid {connector_id}",
                f"host {upstream.host}",
                f"port {upstream.port}",
                f"username {upstream.system_id}",
                f"password {upstream.password}",
                "bind transceiver",
                "submit_throughput 0",
                "con_fail_delay 1",
                "con_loss_delay 1",
                "ok",
            ]
        )
        console.run([f"smppccm -1 {connector_id}"])
        console.run(
            [
                "mtrouter -a",
                "type DefaultRoute",
                f"connector smppc({connector_id})",
                "rate 0.00",
                "ok",
            ]
        )
        console.run(
            ["morouter -a", "type DefaultRoute", f"connector smpps({user.system_id})", "ok"]
        )


@contextlib.contextmanager
def running_jasmin(upstream: Upstream, *, keep_workdir: bool = False) -> Iterator[JasminPeer]:
    """Start Redis, RabbitMQ and Jasmin on loopback, provision them, and stop them all after.

    Yields once the upstream connector is ``BOUND_TRX`` (MT would otherwise wait in RabbitMQ).
    """
    missing = missing_pieces()
    if missing:
        raise JasminError(f"missing {', '.join(missing)}: {INSTALL_HINT}")
    workdir = Path(tempfile.mkdtemp(prefix="mcdaemon-jasmin-"))
    (workdir / "log").mkdir()
    (workdir / "store").mkdir()
    daemons: list[_Daemon] = []
    ports = {
        name: free_port()
        for name in (
            "redis",
            "amqp",
            "rabbit_dist",
            "epmd",
            "smpp",
            "smpp_pb",
            "client_management",
            "router",
            "jcli",
            "http",
            "interceptor",
        )
    }
    try:
        redis = _start_redis(workdir, ports["redis"])
        daemons.append(redis)
        rabbit_env = _rabbitmq_env(workdir, ports["amqp"], ports["rabbit_dist"], ports["epmd"])
        epmd = _Daemon(
            "epmd",
            [str(EPMD), "-port", str(ports["epmd"]), "-address", LOOPBACK],
            workdir / "log" / "epmd.log",
        )
        daemons.append(epmd)
        epmd.wait_for_port(ports["epmd"], 10)
        rabbit = _Daemon(
            "rabbitmq-server",
            [str(RABBITMQ_SERVER)],
            workdir / "log" / "rabbitmq-server.log",
            env=rabbit_env,
            cwd=workdir,
        )
        daemons.append(rabbit)
        redis.wait_for_port(ports["redis"], 10)
        rabbit.wait_for_port(ports["amqp"], 60)

        config = workdir / "jasmin.cfg"
        config.write_text(
            _jasmin_config(
                spec=AMQP_SPEC, log_dir=workdir / "log", store=workdir / "store", ports=ports
            )
        )
        jasmin_env = dict(
            os.environ,
            ROOT_PATH=str(workdir),
            CONFIG_PATH=str(workdir),
            STORE_PATH=str(workdir / "store"),
            RESOURCE_PATH=str(AMQP_SPEC.parent),
            LOG_PATH=str(workdir / "log"),
        )
        jasmind = _Daemon(
            "jasmind",
            [
                str(JASMIN_PYTHON),
                "-c",
                _LAUNCHER,
                str(workdir / "jasmind"),
                "--config",
                str(config),
                "--disable-http-api",
                "--enable-dlr-lookup",
                "--enable-dlr-thrower",
            ],
            workdir / "log" / "jasmind.log",
            env=jasmin_env,
            cwd=workdir,
        )
        daemons.append(jasmind)
        jasmind.wait_for_port(ports["jcli"], 30)
        if "Cannot start" in jasmind.log_tail(200):
            raise JasminError(f"jasmind failed to start a service:\n{jasmind.log_tail()}")

        peer = JasminPeer(
            host=LOOPBACK,
            smpp_port=ports["smpp"],
            jcli_port=ports["jcli"],
            user=JasminAccount(uid="mcd_user", system_id="mcduser", password="mcdpass1"),
            throttled_user=JasminAccount(uid="mcd_slow", system_id="mcdslow", password="slowpas1"),
            connector_id="upstream",
            workdir=workdir,
        )
        _provision(peer.jcli_port, upstream, peer.user, peer.throttled_user, peer.connector_id)
        peer.wait_connector_bound()
        yield peer
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


class BackgroundLoop:
    """An asyncio loop on its own thread, for peers that must outlive each test's own loop.

    pytest-asyncio gives every test a fresh loop; a session-long SMSC lives here instead, and
    tests reach it with ``await loop.call(...)`` (or ``run`` from synchronous code).
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="smsc-loop", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def call(self, function: Callable[[], Awaitable[T]]) -> T:
        """Run ``function()`` on the background loop and await its result from another loop."""

        async def invoke() -> T:
            return await function()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(invoke(), self._loop))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# ---------------------------------------------------------------- the SMSC behind Jasmin


@dataclass(frozen=True)
class UpstreamSubmit:
    """A submit_sm as the upstream SMSC received it from Jasmin's connector."""

    smsc_id: str  # the id the upstream answered with
    source: str
    destination: str
    data_coding: int
    esm_class: int
    registered_delivery: int
    text: str  # decoded, without the UDH
    part_number: int  # 1 when not concatenated
    total_parts: int


def _decode_text(short_message: bytes, data_coding: int, esm_class: int) -> tuple[str, int, int]:
    """Text, part number and part count of a short_message (UDH concatenation understood)."""
    part, total, body = 1, 1, short_message
    if esm_class & 0x40 and short_message:
        header_length = short_message[0]
        header, body = short_message[1 : 1 + header_length], short_message[1 + header_length :]
        position = 0
        while position + 2 <= len(header):
            element, length = header[position], header[position + 1]
            value = header[position + 2 : position + 2 + length]
            if element == 0x00 and length == 3:
                total, part = value[1], value[2]
            elif element == 0x08 and length == 4:
                total, part = value[2], value[3]
            position += 2 + length
    if data_coding == 8:
        return body.decode("utf-16-be"), part, total
    return _gsm7_decode(body), part, total


def _gsm7_decode(septets: bytes) -> str:
    basic, extension = _gsm7_tables()
    out, escaped = [], False
    for septet in septets:
        if escaped:
            out.append(extension.get(septet, "?"))
            escaped = False
        elif septet == 0x1B:
            escaped = True
        else:
            out.append(basic.get(septet, "?"))
    return "".join(out)


def _gsm7_tables() -> tuple[dict[int, str], dict[int, str]]:
    from smpplib import gsm

    basic: dict[int, str] = {}
    extension: dict[int, str] = {}
    for char in gsm.GSM_CHARACTER_TABLE:
        if char == "`":  # smpplib's filler for unused positions
            continue
        encoded = gsm.gsm_encode(char)
        if len(encoded) == 1:
            basic.setdefault(encoded[0], char)
        elif len(encoded) == 2:
            extension.setdefault(encoded[1], char)
    return basic, extension


_MESSAGE_STATES = {"DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "ACCEPTD": 6,
                   "UNKNOWN": 7, "REJECTD": 8}  # fmt: skip


class _PduFactory:
    """smpplib's PDU classes want a client only to number requests; this one numbers them."""

    def __init__(self) -> None:
        self._sequence = 0x1000

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence


class RecordingUpstream:
    """The operator's SMSC behind Jasmin: accepts one bind, records submits, sends deliver_sm.

    Minimal on purpose (smpplib's PDU codecs over asyncio streams); fault injection lives in
    the tests' own SMSC. Runs on a BackgroundLoop, so Jasmin's connector stays bound across
    tests that each have their own event loop.
    """

    system_id = "jasmin"
    password = "upstrpw1"

    def __init__(self) -> None:
        self.submits: list[UpstreamSubmit] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pdus = _PduFactory()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def deliver(self, **fields: Any) -> None:
        from smpplib import smpp

        if self._writer is None:
            raise JasminError("Jasmin's connector is not connected to the upstream")
        pdu = smpp.make_pdu("deliver_sm", client=self._pdus, **fields)
        self._writer.write(pdu.generate())
        await self._writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from smpplib import smpp

        self._writer = writer
        while True:
            try:
                header = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(header, "big") - 4)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            pdu = smpp.parse_pdu(header + body, client=self._pdus, allow_unknown_opt_params=True)
            command, answer = pdu.command, {"sequence": pdu.sequence}
            if command.startswith("bind_"):
                good = pdu.system_id == self.system_id.encode() and (
                    pdu.password == self.password.encode()
                )
                answer.update(system_id="upstream", status=0 if good else 0x0E)
            elif command == "submit_sm":
                smsc_id = str(1000 + len(self.submits))
                text, part, total = _decode_text(pdu.short_message, pdu.data_coding, pdu.esm_class)
                self.submits.append(
                    UpstreamSubmit(
                        smsc_id=smsc_id,
                        source=pdu.source_addr.decode(),
                        destination=pdu.destination_addr.decode(),
                        data_coding=pdu.data_coding,
                        esm_class=pdu.esm_class,
                        registered_delivery=pdu.registered_delivery,
                        text=text,
                        part_number=part,
                        total_parts=total,
                    )
                )
                answer.update(message_id=smsc_id)
            elif command not in ("enquire_link", "unbind"):
                continue  # responses to our deliver_sm
            response = smpp.make_pdu(f"{command}_resp", client=self._pdus, **answer)
            writer.write(response.generate())
            await writer.drain()


class UpstreamView:
    """What the tests see of the upstream SMSC, from their own event loop."""

    def __init__(self, upstream: RecordingUpstream, loop: BackgroundLoop) -> None:
        self._upstream = upstream
        self._loop = loop

    async def submits_to(
        self, destination: str, count: int, timeout: float = 15.0
    ) -> list[UpstreamSubmit]:
        """The first `count` submits for `destination`, waiting for them to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in list(self._upstream.submits) if s.destination == destination]
            if len(found) >= count or time.monotonic() > deadline:
                return found[:count] if len(found) >= count else found
            await asyncio.sleep(0.05)

    async def send_receipt(self, submit: UpstreamSubmit, state: str = "DELIVRD") -> None:
        stamp = time.strftime("%y%m%d%H%M", time.gmtime())
        text = (
            f"id:{submit.smsc_id} sub:001 dlvrd:{'001' if state == 'DELIVRD' else '000'} "
            f"submit date:{stamp} done date:{stamp} stat:{state} err:000 text:"
        )
        await self._loop.call(
            lambda: self._upstream.deliver(
                source_addr=submit.destination,
                destination_addr=submit.source,
                esm_class=0x04,
                short_message=text.encode(),
                receipted_message_id=submit.smsc_id,
                message_state=_MESSAGE_STATES[state],
            )
        )

    async def send_mo(self, source: str, destination: str, text: str) -> None:
        await self._loop.call(
            lambda: self._upstream.deliver(
                source_addr=source, destination_addr=destination, short_message=text.encode()
            )
        )


@contextlib.contextmanager
def running_jasmin_with_upstream() -> Iterator[tuple[JasminPeer, UpstreamView]]:
    """Jasmin bound to a recording upstream SMSC; skips (or fails under CI) when not installed."""
    skip_or_fail_when_missing()
    loop = BackgroundLoop()
    upstream = RecordingUpstream()
    try:
        loop.run(upstream.start())
        endpoint = Upstream(LOOPBACK, upstream.port, upstream.system_id, upstream.password)
        with running_jasmin(endpoint) as peer:
            yield peer, UpstreamView(upstream, loop)
    finally:
        loop.run(upstream.stop())
        loop.close()
