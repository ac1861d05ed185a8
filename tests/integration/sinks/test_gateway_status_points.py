"""Gateway statuses through the real sink into VictoriaMetrics: after a power cut with the
gateway's clock behind, the newest point of its series is the new run's, every field a
dashboard needs is stored, and a replay adds no point."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from climastream.contract import GatewayStatus, Topics, encode
from climastream.stack import Stack
from sinks.config import SinkConfig, load_config
from sinks.influx import InfluxWriter, SinkRunner
from sinks.lineprotocol import gateway_status_line
from sinks.metrics import SinkMetrics

pytestmark = pytest.mark.integration


def sink_config(stack: Stack, group: str) -> SinkConfig:
    return load_config(
        None,
        {
            "kafka": {
                "bootstrap_servers": stack.config.kafka_bootstrap,
                "group_id": group,
                "session_timeout": 6,
            },
            "influx": {"url": stack.config.tsdb_url, "retry_max": 2},
            "metrics": {"port": 0},
        },
    )


async def run_until_committed(runner: SinkRunner, end_offsets: dict[tuple[str, int], int]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + 60
    try:
        while not all(runner.committed.get(key, 0) >= end for key, end in end_offsets.items()):
            if task.done():
                task.result()
            assert time.monotonic() < deadline, f"not committed in time: {runner.committed}"
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task


def status(gateway: str, at: datetime, uptime_s: float, synced: bool | None) -> GatewayStatus:
    return GatewayStatus(
        gateway_id=gateway,
        time=at,
        software_version="0.1.0",
        uptime_s=uptime_s,
        clock_synchronized=synced,
        buffer_depth=int(uptime_s),
        buffer_bytes=0,
        buffer_capacity_bytes=1000,
    )


def export(tsdb_url: str, gateway: str, since: datetime) -> dict[str, list[tuple[int, float]]]:
    """metric name -> [(ms, value)] of the gateway's status series."""
    with urllib.request.urlopen(f"{tsdb_url}/internal/force_flush", timeout=10) as resp:
        resp.read()
    query = urllib.parse.urlencode(
        {
            "match[]": f'{{__name__=~"gateway_status_.*",gateway="{gateway}"}}',
            "start": f"{since.timestamp():.0f}",
        }
    )
    out: dict[str, list[tuple[int, float]]] = {}
    with urllib.request.urlopen(f"{tsdb_url}/api/v1/export?{query}", timeout=60) as resp:
        for raw in resp:
            if raw.strip():
                series = json.loads(raw)
                out[series["metric"]["__name__"]] = sorted(
                    zip(series["timestamps"], series["values"], strict=True)
                )
    return out


async def wait_export(
    tsdb_url: str, gateway: str, since: datetime, points: int
) -> dict[str, list[tuple[int, float]]]:
    deadline = time.monotonic() + 30
    while True:
        got = await asyncio.to_thread(export, tsdb_url, gateway, since)
        if len(got.get("gateway_status_uptime_s", [])) >= points or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.5)


async def test_statuses_land_with_their_clock_state_and_a_replay_adds_nothing(
    stack: Stack,
) -> None:
    run = uuid.uuid4().hex[:8]
    gateway = f"it-{run}-pi"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    statuses = [
        status(gateway, t0, 3600, True),  # the old run's last, before the power cut
        status(gateway, t0 - timedelta(minutes=29), 60, False),  # fake-hwclock: 30 min behind
        status(gateway, t0 - timedelta(minutes=28), 120, None),  # an older gateway: unknown
    ]
    producer = AIOKafkaProducer(bootstrap_servers=stack.config.kafka_bootstrap, acks="all")
    await producer.start()
    end_offsets: dict[tuple[str, int], int] = {}
    try:
        for s in statuses:
            meta = await producer.send_and_wait(Topics.GATEWAY_STATUS.name, encode(s), key=s.key)
            end_offsets[(meta.topic, meta.partition)] = meta.offset + 1
    finally:
        await producer.stop()
    for group in ("a", "b"):  # b: a second group reads the same records again
        runner = SinkRunner(sink_config(stack, f"status-{group}-{run}"), metrics=SinkMetrics())
        await run_until_committed(runner, end_offsets)
    got = await wait_export(stack.config.tsdb_url, gateway, t0 - timedelta(hours=1), 3)
    assert [v for _, v in got["gateway_status_uptime_s"]] == [60, 120, 3600]  # no duplicate
    # VictoriaMetrics stores the boolean as 1/0; absent where the gateway could not tell
    ms = int(t0.timestamp() * 1000)
    assert got["gateway_status_clock_synchronized"] == [(ms - 29 * 60_000, 0.0), (ms, 1.0)]
    assert [v for _, v in got["gateway_status_gateway_time"]] == [
        float(int(s.time.timestamp()) * 10**9) for s in statuses[1:]
    ] + [float(int(t0.timestamp()) * 10**9)]


async def test_a_status_written_at_the_brokers_time_is_the_newest_point(stack: Stack) -> None:
    """What the sink writes for a LogAppendTime topic (Tansu ignores the setting, so the
    points are rendered as the sink renders such records): the new run's statuses, its
    clock 30 min behind, are the newest points, the old run's buffered ones keep their time."""
    gateway = f"it-{uuid.uuid4().hex[:8]}-pi"
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)
    lines = [
        gateway_status_line(status(gateway, t0, 3600, True), appended_at=t0),
        gateway_status_line(
            status(gateway, t0 - timedelta(minutes=29), 60, False),
            appended_at=t0 + timedelta(minutes=1),
        ),
        # the old run's status buffered before the cut, sent after the new run's
        gateway_status_line(
            status(gateway, t0 - timedelta(seconds=30), 3570, True),
            appended_at=t0 + timedelta(minutes=2),
        ),
    ]
    async with InfluxWriter(stack.config.tsdb_url, "", SecretStr("")) as writer:
        await writer.write("climastream", lines)
        await writer.write("climastream", lines)  # a replay
    got = await wait_export(stack.config.tsdb_url, gateway, t0 - timedelta(hours=1), 3)
    uptime = got["gateway_status_uptime_s"]
    assert len(uptime) == 3
    assert uptime[-1] == (int((t0 + timedelta(minutes=1)).timestamp() * 1000), 60.0)
