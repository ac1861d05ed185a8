"""Every cloud-side Kafka client over mutual TLS, against a real broker.

Tansu 0.6 (the local broker) cannot serve TLS itself: ``--cert`` and ``--key`` are mutually
exclusive on its command line, and ``--cert`` alone listens in plain text. So a ``socat``
TLS terminator that demands a client certificate signed by the test CA stands in front of
a plain Tansu that advertises the terminator's port: a client that does not speak TLS with
the right CA and client certificate gets nothing. The settings come from the
``CLIMASTREAM_KAFKA_*`` variables, as in production.

SASL cannot be tested here: Tansu's ``--authentication`` needs SCRAM users, and ``tansu
user create`` cannot add the first one to a broker that already demands authentication
(its in-memory store is lost on restart). tests/unit/test_kafkasec.py checks what aiokafka
and Faust receive for SASL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from climastream.contract import (
    AlertAction,
    AlertActionKind,
    Quantity,
    Reading,
    ReadingBatch,
    Topics,
    encode,
)
from climastream.kafkasec import KafkaSecurity
from climastream.quantities import CANONICAL_UNITS
from climastream.stack import tansu_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("socat"), reason="needs socat (Debian package)"),
    pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command"),
]

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_open(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-2000:]}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(tmp: Path) -> None:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, both signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=climastream test CA", cwd=tmp)  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("broker", ["-extfile", "san.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=tmp)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *ext, cwd=tmp)  # fmt: skip


@dataclass
class TlsKafka:
    bootstrap: str
    env: dict[str, str]  # the CLIMASTREAM_KAFKA_* variables of a client
    security: KafkaSecurity
    tmp: Path

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "climastream.cli", *args],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
        )  # fmt: skip

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "climastream.cli", *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
                     **self.env},
            )  # fmt: skip
        finally:
            log.close()

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    tmp = tmp_path_factory.mktemp("kafka-tls")
    _certificates(tmp)
    plain, tls = _free_port(), _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (tmp / "tansu.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [str(tansu_binary()), "broker",
                 "--listener-url", f"tcp://127.0.0.1:{plain}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{tls}",
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            ))  # fmt: skip
        _wait_open(plain, procs[-1], tmp / "tansu.log")
        with (tmp / "socat.log").open("wb") as log:
            procs.append(subprocess.Popen(
                ["socat",
                 f"OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,fork,cert={tmp}/broker.pem,"
                 f"key={tmp}/broker.key,cafile={tmp}/ca.pem,verify=1",
                 f"TCP:127.0.0.1:{plain}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            ))  # fmt: skip
        _wait_open(tls, procs[-1], tmp / "socat.log")
        env = {
            "CLIMASTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{tls}",
            "CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "CLIMASTREAM_KAFKA_SSL_CAFILE": str(tmp / "ca.pem"),
            "CLIMASTREAM_KAFKA_SSL_CERTFILE": str(tmp / "client.pem"),
            "CLIMASTREAM_KAFKA_SSL_KEYFILE": str(tmp / "client.key"),
        }
        kafka = TlsKafka(f"127.0.0.1:{tls}", env, KafkaSecurity.from_env(env), tmp)
        asyncio.run(_create_topics(kafka))  # in process: each test checks one component
        yield kafka
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _create_topics(kafka: TlsKafka) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from climastream.topics import ensure_topics

    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap, **kafka.security.aiokafka_kwargs()
    )
    await admin.start()
    try:
        assert all(result.ok for result in await ensure_topics(admin))
    finally:
        await admin.close()


def _eventually(check: Callable[[], Any], what: str, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError(f"never happened: {what}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _readings(run: str, start: datetime, seconds: int) -> list[Reading]:
    q = Quantity("temperature")
    return [
        Reading(
            device_id=f"th-{run}", gateway_id=f"gw-{run}", seq=s, quantity=q,
            value=20.0 + s % 5, unit=CANONICAL_UNITS[q], event_time=start + timedelta(seconds=s),
            ingest_time=start + timedelta(seconds=s), zone=f"z-{run}",
        )
        for s in range(seconds)
    ]  # fmt: skip


async def _produce(kafka: TlsKafka, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, **kafka.security.aiokafka_kwargs()
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _read(kafka: TlsKafka, topic: str, seconds: float) -> list[bytes]:
    """Every value of ``topic`` from the beginning, read for up to ``seconds``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, **kafka.security.aiokafka_kwargs(),
    )  # fmt: skip
    await consumer.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return out


def _send_readings(kafka: TlsKafka, readings: list[Reading]) -> None:
    batch = ReadingBatch(gateway_id=readings[0].gateway_id, readings=tuple(readings))
    asyncio.run(_produce(kafka, Topics.READINGS.name, [(batch.key, encode(batch))]))


def test_a_client_without_the_tls_settings_is_refused(tls_kafka: TlsKafka) -> None:
    """The terminator really demands TLS with a client certificate: the rest is not vacuous."""
    env = {k: v for k, v in tls_kafka.env.items() if "CERTFILE" not in k and "KEYFILE" not in k}
    out = subprocess.run(
        [sys.executable, "-m", "climastream.cli", "topics", "create", "--timeout", "5"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip
    assert out.returncode == 2
    assert f"cannot reach Kafka at {tls_kafka.bootstrap} over SSL" in out.stderr


def test_topics_create_connects_over_mtls(tls_kafka: TlsKafka) -> None:
    out = tls_kafka.run("topics", "create")
    assert out.returncode == 0, out.stderr
    assert f"{Topics.READINGS.name}: exists" in out.stdout


def test_tail_and_the_alerts_commands_connect_over_mtls(tls_kafka: TlsKafka) -> None:
    run = uuid.uuid4().hex[:8]
    _send_readings(tls_kafka, _readings(run, datetime.now(UTC), 3))
    tail = tls_kafka.run("tail", "--backfill", "50", "--max-lines", "3", "--json",
                         "--device", f"th-{run}")  # fmt: skip
    assert tail.returncode == 0, tail.stderr
    assert len(tail.stdout.splitlines()) == 3
    assert f"th-{run}" in tail.stdout
    listing = tls_kafka.run("alerts", "list")
    assert listing.returncode == 0, listing.stderr
    assert "no active alerts" in listing.stdout
    # the options win over the environment: a CA that did not sign the broker is refused
    wrong_ca = tls_kafka.run(
        "alerts", "list", "--kafka-ssl-cafile", str(tls_kafka.tmp / "client.pem")
    )
    assert wrong_ca.returncode == 2
    assert "over SSL client certificate" in wrong_ca.stderr


def test_the_console_feed_and_action_producer_connect_over_mtls(tls_kafka: TlsKafka) -> None:
    from console.feed import FeedSettings, KafkaActionSink, KafkaFeed
    from console.state import LiveState

    async def main() -> list[bytes]:
        feed = KafkaFeed(
            FeedSettings(bootstrap_servers=tls_kafka.bootstrap, kafka_security=tls_kafka.security),
            LiveState([]),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(feed.run(stop))
        await asyncio.wait_for(feed.ready.wait(), 60)
        actions = KafkaActionSink(tls_kafka.bootstrap, security=tls_kafka.security)
        action = AlertAction(
            fingerprint="00112233aabbccdd", action=AlertActionKind.ACKNOWLEDGE,
            actor="tls-test", at=datetime.now(UTC), comment=run,
        )  # fmt: skip
        await actions.send(action)
        await actions.stop()
        stop.set()
        await running
        return await _read(tls_kafka, Topics.ALERT_ACTIONS.name, 3)

    run = uuid.uuid4().hex[:8]
    assert any(run.encode() in value for value in asyncio.run(main()))


def test_the_sink_consumes_over_mtls(tls_kafka: TlsKafka) -> None:
    from sinks.config import load_config
    from sinks.influx import SinkRunner

    written: list[str] = []
    run = uuid.uuid4().hex[:8]
    arrived = asyncio.Event()

    class Recording:
        async def start(self) -> None:
            pass

        async def write(self, bucket: str, lines: Any) -> None:
            written.extend(lines)
            if any(run in line for line in lines):
                arrived.set()

        async def close(self) -> None:
            pass

    _send_readings(tls_kafka, _readings(run, datetime.now(UTC), 2))
    config = load_config(
        None,
        {"kafka": {"bootstrap_servers": tls_kafka.bootstrap, "group_id": f"sink-{run}"}},
        tls_kafka.security,
    )
    runner = SinkRunner(config, writer=Recording())

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 60)
        stop.set()
        await running

    asyncio.run(main())
    assert any(run in line for line in written)


def test_the_notifier_consumes_over_mtls(tls_kafka: TlsKafka) -> None:
    run = uuid.uuid4().hex[:8]
    config = tls_kafka.tmp / f"alerting-{run}.yaml"
    config.write_text(
        "webhooks: [{name: w, url: 'http://127.0.0.1:9/hook', secret: not-a-real-secret}]\n"
        "contacts: {ops: {webhook: w}}\n"
        "routes: [{match: {}, notify: [ops]}]\n"
        f"ledger: {tls_kafka.tmp / f'ledger-{run}.db'}\n"
    )
    ready = tls_kafka.tmp / f"notify-{run}.ready"
    proc = tls_kafka.spawn(f"notify-{run}", "alerts", "notify", "--config", str(config),
                           "--group", f"notify-{run}", "--ready-file", str(ready))  # fmt: skip
    try:
        _eventually(lambda: ready.exists() or proc.poll() is not None, "notifier ready")
        assert proc.poll() is None, tls_kafka.log(f"notify-{run}")
    finally:
        _stop(proc)


def test_the_alert_engine_runs_over_mtls(tls_kafka: TlsKafka) -> None:
    run = uuid.uuid4().hex[:8]
    ready = tls_kafka.tmp / f"engine-{run}.ready"
    proc = tls_kafka.spawn(f"engine-{run}", "alerts", "engine", "--app-id", f"alerts-{run}",
                           "--data-dir", str(tls_kafka.tmp / f"faust-alerts-{run}"),
                           "--ready-file", str(ready))  # fmt: skip
    try:
        _eventually(lambda: ready.exists() or proc.poll() is not None, "alert engine ready")
        assert proc.poll() is None, tls_kafka.log(f"engine-{run}")
    finally:
        _stop(proc)


def test_the_kpi_worker_computes_kpis_over_mtls(tls_kafka: TlsKafka) -> None:
    run = uuid.uuid4().hex[:8]
    config = tls_kafka.tmp / f"stream-{run}.yaml"
    config.write_text("window: 2s\ngrace: 1s\n")
    proc = tls_kafka.spawn(f"kpi-{run}", "stream", "worker", "--app-id", f"kpi-{run}",
                           "--config", str(config), "--store", "memory",
                           "--data-dir", str(tls_kafka.tmp / f"faust-kpi-{run}"))  # fmt: skip
    sent = 0
    try:

        def kpis() -> list[bytes]:
            # fresh readings on each look: the worker may join its group at any time, and
            # readings of windows that closed before it did would be routed late
            nonlocal sent
            assert proc.poll() is None, tls_kafka.log(f"kpi-{run}")
            now = datetime.now(UTC)
            _send_readings(tls_kafka, [r.model_copy(update={"seq": sent + i})
                                       for i, r in enumerate(_readings(run, now, 1))])  # fmt: skip
            sent += 1
            values = asyncio.run(_read(tls_kafka, Topics.KPI.name, 1))
            return [v for v in values if f"z-{run}".encode() in v]

        assert _eventually(kpis, "a KPI of this run on the kpi topic", seconds=120)
    finally:
        _stop(proc)
