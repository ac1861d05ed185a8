"""The sink against the real stack: Tansu (Kafka protocol) and VictoriaMetrics.

Each test writes readings of its own gateways, then reads every stored sample back from
VictoriaMetrics (``/api/v1/export``) and requires each (device, seq) exactly once.
VictoriaMetrics runs with -dedup.minScrapeInterval=1ms, so a rewritten point (same series,
same timestamp) overwrites, like InfluxDB: a duplicate would only appear if the sink wrote a
point under a different series or timestamp. The outage length is
CLIMASTREAM_TEST_TSDB_OUTAGE_S (the issue's 60 s by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from climastream.contract import Quantity, Reading, ReadingBatch, encode
from climastream.stack import Stack
from sinks.config import load_config
from sinks.influx import SinkRunner
from sinks.metrics import SinkMetrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
OUTAGE_S = float(os.environ.get("CLIMASTREAM_TEST_TSDB_OUTAGE_S", "60"))


class Load:
    """Readings of ``gateways`` gateways x ``devices`` devices with per-device seq numbers."""

    def __init__(self, gateways: int = 4, devices: int = 5) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.gateways = [f"it-{self.run}-g{g}" for g in range(gateways)]
        self.devices = devices
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)
        self.seq = 0
        self.sent: list[tuple[str, int]] = []
        self.end_offsets: dict[tuple[str, int], int] = {}

    def batch(self, gateway: str, n: int) -> ReadingBatch:
        readings = []
        for i in range(n):
            device = f"{gateway}-d{i % self.devices}"
            seq = self.seq + i
            readings.append(
                Reading(
                    device_id=device,
                    gateway_id=gateway,
                    seq=seq,
                    quantity=Quantity.TEMPERATURE,
                    value=15.0 + (seq % 100) / 10,
                    unit="Cel",
                    event_time=self.base + timedelta(milliseconds=10 * seq),
                    ingest_time=self.base,
                    zone="z1",
                )
            )
            self.sent.append((device, seq))
        self.seq += n
        return ReadingBatch(gateway_id=gateway, readings=tuple(readings))

    async def produce(self, producer: AIOKafkaProducer, per_gateway: int) -> None:
        futures = []
        for gateway in self.gateways:
            record = self.batch(gateway, per_gateway)
            futures.append(await producer.send("readings", encode(record), key=gateway.encode()))
        for meta in await asyncio.gather(*futures):
            key = (meta.topic, meta.partition)
            self.end_offsets[key] = max(self.end_offsets.get(key, 0), meta.offset + 1)

    def stored(self, tsdb_url: str) -> list[tuple[str, int]]:
        """Every stored (device, seq), from the reading_seq samples of this load."""
        with urllib.request.urlopen(f"{tsdb_url}/internal/force_flush", timeout=10) as resp:
            resp.read()
        query = urllib.parse.urlencode(
            {
                "match[]": f'{{__name__="reading_seq",gateway=~"it-{self.run}-.*"}}',
                "start": f"{(self.base - timedelta(minutes=1)).timestamp():.0f}",
            }
        )
        found = []
        with urllib.request.urlopen(f"{tsdb_url}/api/v1/export?{query}", timeout=60) as resp:
            for raw in resp:
                if raw.strip():
                    series = json.loads(raw)
                    device = series["metric"]["device"]
                    found += [(device, int(v)) for v in series["values"]]
        return found


def assert_exactly_once(load: Load, stored: list[tuple[str, int]]) -> None:
    counts = Counter(stored)
    duplicates = {k: c for k, c in counts.items() if c > 1}
    missing = set(load.sent) - set(counts)
    assert not duplicates, f"{len(duplicates)} points stored more than once, e.g. {duplicates}"
    assert not missing, f"{len(missing)} of {len(load.sent)} points missing"
    assert len(stored) == len(load.sent)


async def wait_stored(load: Load, tsdb_url: str, within: float) -> list[tuple[str, int]]:
    deadline = time.monotonic() + within
    stored: list[tuple[str, int]] = []
    while time.monotonic() < deadline:
        stored = await asyncio.to_thread(load.stored, tsdb_url)
        if len(set(stored)) >= len(load.sent):
            return stored
        await asyncio.sleep(1)
    return stored


def sink_config(stack: Stack, group: str, **influx: Any) -> Any:
    return load_config(
        None,
        {
            "kafka": {
                "bootstrap_servers": stack.config.kafka_bootstrap,
                "group_id": group,
                "session_timeout": 6,
            },
            "influx": {"url": stack.config.tsdb_url, "retry_max": 2, **influx},
            "metrics": {"port": 0},
        },
    )


async def run_until_committed(runner: SinkRunner, load: Load, within: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + within
    try:
        while not all(runner.committed.get(key, 0) >= end for key, end in load.end_offsets.items()):
            if task.done():
                task.result()
            assert time.monotonic() < deadline, f"not committed in time: {runner.committed}"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task


@pytest.fixture
async def producer(stack: Stack) -> Any:
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.config.kafka_bootstrap, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_replaying_the_same_range_twice_stores_each_point_once(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    load = Load()
    for _ in range(20):
        await load.produce(producer, per_gateway=250)  # 20,000 readings
    first = SinkRunner(sink_config(stack, f"replay-a-{load.run}"), metrics=SinkMetrics())
    await run_until_committed(first, load, within=120)
    assert_exactly_once(load, await wait_stored(load, stack.config.tsdb_url, 30))
    # A second consumer group reads the same offsets again from the beginning.
    again = SinkRunner(sink_config(stack, f"replay-b-{load.run}"), metrics=SinkMetrics())
    await run_until_committed(again, load, within=120)
    assert again.counters().points >= len(load.sent)
    assert_exactly_once(load, await asyncio.to_thread(load.stored, stack.config.tsdb_url))


async def test_two_sinks_in_one_group_share_the_partitions(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    load = Load(gateways=8)
    group = f"shared-{load.run}"
    sinks = [SinkRunner(sink_config(stack, group), metrics=SinkMetrics()) for _ in range(2)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in sinks]
    try:
        deadline = time.monotonic() + 60
        while True:
            owned = [{p for t, p in s.assignment() if t == "readings"} for s in sinks]
            if all(owned) and not (owned[0] & owned[1]) and len(owned[0] | owned[1]) == 4:
                break
            assert time.monotonic() < deadline, f"group never split the partitions: {owned}"
            await asyncio.sleep(0.2)
        for _ in range(5):
            await load.produce(producer, per_gateway=100)
        stored = await wait_stored(load, stack.config.tsdb_url, 90)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert_exactly_once(load, stored)
    consumed = [s.metrics.value("climastream_sink_records_total", topic="readings") for s in sinks]
    assert all(n > 0 for n in consumed), f"one sink did all the work: {consumed}"


@pytest.mark.slow
async def test_database_outage_under_sustained_load_loses_and_duplicates_nothing(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    load = Load()
    runner = SinkRunner(sink_config(stack, f"outage-{load.run}"), metrics=SinkMetrics())
    stop = asyncio.Event()
    sink = asyncio.create_task(runner.run(stop))
    load_stop = asyncio.Event()

    async def sustained_load() -> None:
        while not load_stop.is_set():
            await load.produce(producer, per_gateway=25)  # 100 readings every 0.2 s
            await asyncio.sleep(0.2)

    generator = asyncio.create_task(sustained_load())
    try:
        await asyncio.sleep(8)
        await asyncio.to_thread(stack.stop_service, "tsdb")
        try:
            await asyncio.sleep(OUTAGE_S)
            assert not sink.done(), "the sink must ride out the outage"
        finally:
            await asyncio.to_thread(stack.start_service, "tsdb")
        await asyncio.sleep(8)
        load_stop.set()
        await generator
        stored = await wait_stored(load, stack.config.tsdb_url, 180)
    finally:
        load_stop.set()
        stop.set()
        await sink
    assert runner.counters().retries > 0, "the outage was not noticed"
    assert_exactly_once(load, stored)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _points_written(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("climastream_sink_points_written_total{")
    )


async def test_sigkill_mid_batch_then_restart_loses_nothing(
    stack: Stack, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    load = Load()
    for _ in range(50):
        await load.produce(producer, per_gateway=1000)  # 200,000 readings
    config = tmp_path / "sink.yaml"
    config.write_text(
        f"kafka:\n  bootstrap_servers: {stack.config.kafka_bootstrap}\n"
        f"  group_id: kill-{load.run}\n  session_timeout: 6\n"
        f"influx:\n  url: {stack.config.tsdb_url}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "climastream.cli",
                "sink",
                "run",
                "--config",
                str(config),
                "--metrics-port",
                str(port),
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    port = _free_port()
    sink = start(port)
    try:
        deadline = time.monotonic() + 60
        while _points_written(port) == 0:
            assert sink.poll() is None, "the sink exited"
            assert time.monotonic() < deadline, "the sink wrote nothing"
            await asyncio.sleep(0.02)
        sink.send_signal(signal.SIGKILL)
        sink.wait()
        before = len(set(await asyncio.to_thread(load.stored, stack.config.tsdb_url)))
        assert before < len(load.sent), "killed too late to test a crash mid-stream"
        port = _free_port()
        sink = start(port)
        stored = await wait_stored(load, stack.config.tsdb_url, 180)
    finally:
        if sink.poll() is None:
            sink.send_signal(signal.SIGTERM)
            try:
                sink.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # still an error, but the sink must not outlive the test: an unreaped Popen
                # is a ResourceWarning in whichever later test the GC collects it
                sink.kill()
                sink.wait()
                raise
    assert_exactly_once(load, stored)
