"""``climastream demo``: the whole system on the local stack, with live progress.

Starts the local stack, a Faust KPI worker, the alert engine (with the demo rules in
deploy/local/demo-alert-rules.yaml), the InfluxDB sink and a gateway agent with a dozen
simulated sensors, each as its own process, exactly as they run in production. With
``--seconds N`` it stops the gateway after N seconds, waits until the pipeline has drained,
shuts everything down and prints one line::

    demo: sent=<n> stored_readings=<n> stored_kpis=<n> alerts=<n>

``sent`` is what Kafka acknowledged to the gateway; the ``stored_*`` and ``alerts`` counts
are read back from the time-series database. The exit status is 0 only when every sent
reading is stored exactly once and at least one KPI was stored.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from climastream.stack import Stack, StackConfig, StackError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GATEWAY_CONFIG = ROOT / "deploy" / "local" / "demo-gateway.yaml"
#: virtual devices speaking the real wire formats (serial ptys, LoRaWAN, MQTT JSON)
DEMO_FLEET = ROOT / "deploy" / "local" / "demo-fleet.yaml"
DEFAULT_STREAM_CONFIG = ROOT / "deploy" / "local" / "demo-stream.yaml"
DEMO_ALERT_RULES = ROOT / "deploy" / "local" / "demo-alert-rules.yaml"


@dataclass
class StoredCounts:
    readings: int
    kpis: int
    alerts: int


def flush_tsdb(tsdb_url: str) -> None:
    """Make every sample written so far visible to queries (VictoriaMetrics buffers ~1 s)."""
    with urllib.request.urlopen(f"{tsdb_url}/internal/force_flush", timeout=10) as resp:
        resp.read()


def count_samples(
    tsdb_url: str,
    metric: str,
    since: datetime,
    labels: dict[str, str] | None = None,
    *,
    flush: bool = True,
) -> int:
    """Number of stored samples of ``metric`` since ``since`` (deduplicated by the TSDB).

    ``labels`` narrows the count to series with those exact tag values; ``flush=False``
    when the caller has just flushed.
    """
    if flush:
        flush_tsdb(tsdb_url)
    matchers = [f'__name__="{metric}"'] + [
        f'{key}="{value}"' for key, value in sorted((labels or {}).items())
    ]
    query = urllib.parse.urlencode(
        {"match[]": "{" + ",".join(matchers) + "}", "start": f"{since.timestamp():.3f}"}
    )
    total = 0
    with urllib.request.urlopen(f"{tsdb_url}/api/v1/export?{query}", timeout=30) as resp:
        for line in resp:
            if line.strip():
                total += len(json.loads(line)["values"])
    return total


def _status_age(status: dict[str, object]) -> str:
    """`` (gateway status Ns old)``: ``sent`` and ``buffered`` come from the gateway's last
    status, so they trail the stored counts, which are read live from the database."""
    stamp = status.get("time")
    if not isinstance(stamp, str):
        return ""
    try:
        age = (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return ""
    return f" (gateway status {max(age, 0.0):.0f}s old)"


def stored_counts(tsdb_url: str, since: datetime) -> StoredCounts:
    flush_tsdb(tsdb_url)  # once for all three counts
    return StoredCounts(
        readings=count_samples(tsdb_url, "reading_value", since, flush=False),
        kpis=count_samples(tsdb_url, "kpi_value", since, flush=False),
        alerts=count_samples(tsdb_url, "alert_active", since, flush=False),
    )


class Demo:
    def __init__(
        self,
        stack: Stack,
        gateway_config: Path,
        workdir: Path,
        alert_rules: Path | None = None,
        fleet: Path | None = None,
    ) -> None:
        self.stack = stack
        self.alert_rules = alert_rules
        self.fleet = fleet
        self.gateway_config = gateway_config
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, **stack.env(), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "climastream.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=ROOT,
        )
        log.close()

    def start(self, run_id: str, app_id: str = "climastream-kpi") -> None:
        kafka = self.stack.config.kafka_bootstrap
        # an earlier run's status would be shown as this gateway's until it writes its own
        # (its first status comes one status interval after the start)
        (self.workdir / "edge-status.json").unlink(missing_ok=True)
        self._spawn(
            "stream",
            [
                "stream",
                "worker",
                "--kafka",
                kafka,
                "--app-id",
                app_id,
                "--data-dir",
                str(self.workdir / f"faust-{run_id}"),
                "--config",
                str(DEFAULT_STREAM_CONFIG),
            ],
        )
        self._spawn("sink", ["sink", "run", "--kafka", kafka, "--metrics-port", "0"])
        if self.alert_rules is not None:
            self._spawn(
                "alerts",
                [
                    "alerts",
                    "engine",
                    "--kafka",
                    kafka,
                    "--rules",
                    str(self.alert_rules),
                    "--app-id",
                    f"climastream-alerts-{run_id}",
                    "--data-dir",
                    str(self.workdir / f"faust-alerts-{run_id}"),
                ],
            )
        if self.fleet is not None:
            self._spawn(
                "simulate",
                [
                    "simulate",
                    "--config",
                    str(self.fleet),
                    "--mqtt-port",
                    str(self.stack.config.mqtt_port),
                ],
            )
        self.start_edge(run_id)

    def start_edge(self, run_id: str) -> None:
        """Start (or, once stopped, restart) the gateway agent, on the run's buffer."""
        self._spawn(
            "edge",
            [
                "edge",
                "run",
                "--config",
                str(self.gateway_config),
                "--kafka",
                self.stack.config.kafka_bootstrap,
                "--buffer",
                str(self.workdir / f"buffer-{run_id}.db"),
                "--status-file",
                str(self.workdir / "edge-status.json"),
            ],
        )

    def start_console(self, port: int) -> str:
        """Serve the operator console on ``port``; returns a fresh operator token."""
        token = secrets.token_urlsafe(24)
        self.env["CLIMASTREAM_CONSOLE_OPERATOR_TOKEN"] = token
        self._spawn(
            "console",
            [
                "console",
                "--kafka",
                self.stack.config.kafka_bootstrap,
                "--port",
                str(port),
                "--gateway-config",
                str(self.gateway_config),
            ],
        )
        return token

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(
                    f"{name} exited with status {proc.returncode}; "
                    f"see {self.workdir / (name + '.log')}"
                )

    def edge_status(self) -> dict[str, object]:
        """The gateway's last status file (written on its status interval)."""
        try:
            return dict(json.loads((self.workdir / "edge-status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> None:
        for name in ("edge", "simulate", "alerts", "stream", "sink", "console"):
            self.stop(name)

    def kill_all(self) -> None:
        """SIGKILL every process still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()


def run_demo(
    seconds: float, gateway_config: Path, stack_config: StackConfig, console_port: int = 0
) -> int:
    demo: Demo | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        """Ctrl-C or SIGTERM (systemd, kill, a CI runner) stops the demo: every process it
        started is stopped, and the stack if it started it. Another one while stopping
        kills what is left, instead of leaving it running by cutting the stop short."""
        nonlocal stopping
        if stopping and demo is not None:
            print(
                f"demo: {signal.Signals(signum).name} while stopping; killing what is left",
                flush=True,
            )
            demo.kill_all()
            return
        stopping = True  # from here on the demo only stops
        raise KeyboardInterrupt(signal.Signals(signum).name)

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(stack_config)
    started_stack = not all(stack.pid(s) for s in ("kafka", "mqtt", "tsdb"))
    print("demo: starting the local stack (Tansu, Mosquitto, VictoriaMetrics) ...", flush=True)
    stack.up()
    workdir = Path(".demo").resolve()
    workdir.mkdir(exist_ok=True)
    if started_stack:
        # Tansu keeps topics in memory: a new stack has no changelogs, so local table state
        # and gateway buffers of earlier runs would contradict it (Faust refuses to start).
        for stale in [*workdir.glob("faust*"), *workdir.glob("buffer-*.db*")]:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    since = datetime.now(UTC)
    run_id = since.strftime("%Y%m%dT%H%M%S")
    demo = Demo(stack, gateway_config, workdir, alert_rules=DEMO_ALERT_RULES, fleet=DEMO_FLEET)
    tsdb = stack.config.tsdb_url
    status = 1
    try:
        demo.start(run_id)
        print(
            "demo: simulated devices, gateway, stream worker, alert engine and sink running; "
            f"logs in {workdir}",
            flush=True,
        )
        if console_port:
            token = demo.start_console(console_port)
            print(
                f"demo: console at http://127.0.0.1:{console_port}/ (operator token {token}); "
                f"NGSI-LD entities at http://127.0.0.1:{console_port}/ngsi-ld/v1/entities "
                "(Authorization: Bearer <token>)",
                flush=True,
            )
        t0 = time.monotonic()
        while seconds <= 0 or time.monotonic() - t0 < seconds:
            time.sleep(5)
            demo.check_alive()
            counts = stored_counts(tsdb, since)
            edge = demo.edge_status()
            print(
                f"demo: t={time.monotonic() - t0:4.0f}s sent={edge.get('readings_sent_total', 0)} "
                f"buffered={edge.get('buffer_depth', 0)}{_status_age(edge)} "
                f"stored_readings={counts.readings} stored_kpis={counts.kpis} "
                f"alerts={counts.alerts}",
                flush=True,
            )
        print("demo: stopping the gateway and draining the pipeline ...", flush=True)
        demo.stop("edge")
        sent = int(str(demo.edge_status().get("readings_sent_total", 0) or 0))
        # Wait until every sent reading is stored and the final windows (end + grace +
        # the close timer) have been written.
        deadline = time.monotonic() + 60
        counts = stored_counts(tsdb, since)
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(1)
            latest = stored_counts(tsdb, since)
            if latest != counts:
                counts, stable_since = latest, time.monotonic()
            elif (
                counts.readings >= sent
                and counts.kpis > 0
                and (time.monotonic() - stable_since > 15)
            ):
                break
        demo.stop_all()
        counts = stored_counts(tsdb, since)
        print(
            f"demo: sent={sent} stored_readings={counts.readings} stored_kpis={counts.kpis} "
            f"alerts={counts.alerts}",
            flush=True,
        )
        status = 0 if sent > 0 and counts.readings == sent and counts.kpis > 0 else 1
    except KeyboardInterrupt:
        print("demo: interrupted; stopping everything it started ...", flush=True)
        status = 130
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        status = 2
    finally:
        stopping = True
        demo.stop_all()
        if started_stack:
            stack.down()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return status


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole system on the local stack with simulated sensors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds", type=float, default=0, help="stop after N seconds (0: until Ctrl-C)"
    )
    parser.add_argument(
        "--gateway-config", type=Path, default=DEFAULT_GATEWAY_CONFIG, help="gateway YAML"
    )
    parser.add_argument(
        "--console-port",
        type=int,
        default=0,
        help="also serve the operator console on this port (0: off)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        return run_demo(args.seconds, args.gateway_config, StackConfig(), args.console_port)
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
