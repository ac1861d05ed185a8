"""The whole path once, on the real local stack, with each part as its own process.

A simulated gateway -> Tansu -> Faust worker -> InfluxDB sink -> VictoriaMetrics. The KPI
values are checked against means computed here from the readings that went through Kafka.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from climastream.contract import KpiValue, Reading, ReadingBatch, Topics, decode
from climastream.demo import Demo, count_samples
from climastream.stack import Stack

pytestmark = pytest.mark.integration

WINDOW = timedelta(seconds=10)


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset now: the test reads only what came after."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        assert partitions, f"topic {topic} has no partitions"
        end = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in end.items()}
    finally:
        await consumer.stop()


async def _read_topic(bootstrap: str, topic: str, since: dict[int, int]) -> list[bytes]:
    """Every record of ``topic`` from the offsets ``since`` up to the current end.

    Reading from the beginning would also read what earlier tests left on the shared
    broker: thousands of records, read again on every poll of the wait loops below.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in since]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, since[tp.partition])
        end = await consumer.end_offsets(partitions)
        values: list[bytes] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                values.extend(r.value for r in records)
        return values
    finally:
        await consumer.stop()


def _window_values(readings: list[Reading]) -> dict[tuple[str, str, datetime], list[float]]:
    """The values of each (device, quantity, 10 s window start): what each stat.mean sums."""
    values: dict[tuple[str, str, datetime], list[float]] = defaultdict(list)
    for r in readings:
        micros = int(r.event_time.timestamp() * 1_000_000)
        start = datetime.fromtimestamp(micros // 10_000_000 * 10, UTC)
        values[(r.device_id, r.quantity.value, start)].append(r.value)
    return values


def _device_means(
    bootstrap: str, kpi_from: dict[int, int], prefix: str, expected: int, timeout_s: float
) -> list[KpiValue]:
    """The stat.mean KPIs of devices named ``prefix...`` on the kpi topic since
    ``kpi_from``, once there are ``expected`` of them or ``timeout_s`` has passed."""

    def emitted() -> list[KpiValue]:
        return [
            k
            for raw in asyncio.run(_read_topic(bootstrap, Topics.KPI.name, kpi_from))
            if (k := decode(raw, KpiValue)).kpi_id == "stat.mean"
            and k.device_id
            and k.device_id.startswith(prefix)
        ]

    deadline = time.monotonic() + timeout_s
    kpis = emitted()
    while len(kpis) < expected and time.monotonic() < deadline:
        time.sleep(1)
        kpis = emitted()
    return kpis


def _gateway_config(tmp_path: Path, gateway_id: str, prefix: str) -> Path:
    devices = [
        {
            "device_id": f"{prefix}-th-{zone}",
            "zone": zone,
            "quantities": ["temperature", "relative_humidity"],
        }
        for zone in ("centre", "park")
    ] + [{"device_id": f"{prefix}-pm-centre", "zone": "centre", "quantities": ["pm2_5", "pm10"]}]
    return _simulated_gateway(
        tmp_path, gateway_id, devices, cadence_s=0.5, batch_max_readings=50, status_interval_s=2
    )


def _simulated_gateway(
    tmp_path: Path,
    gateway_id: str,
    devices: list[dict[str, Any]],
    cadence_s: float,
    **settings: Any,
) -> Path:
    """Write a gateway config with one simulated source of ``devices``; its path."""
    config = {
        "gateway_id": gateway_id,
        **settings,
        "sources": [
            {"kind": "simulated", "name": "sim", "cadence_s": cadence_s, "devices": devices}
        ],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_readings_flow_to_the_database_and_kpis_match_hand_computed_means(
    stack: Stack, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    gateway_id, prefix = f"gw-{run}", f"t{run}"
    since = datetime.now(UTC) - timedelta(seconds=1)
    bootstrap = stack.config.kafka_bootstrap
    readings_from = asyncio.run(_end_offsets(bootstrap, Topics.READINGS.name))
    kpi_from = asyncio.run(_end_offsets(bootstrap, Topics.KPI.name))

    def stored() -> int:
        return count_samples(stack.config.tsdb_url, "reading_value", since, {"gateway": gateway_id})

    demo = Demo(stack, _gateway_config(tmp_path, gateway_id, prefix), tmp_path)
    try:
        demo.start(run, app_id=f"kpi-test-{run}")
        time.sleep(22)
        demo.check_alive()
        assert demo.stop("edge") == 0
        sent = int(str(demo.edge_status()["readings_sent_total"]))
        assert sent > 50

        # every reading is stored exactly once
        deadline = time.monotonic() + 60
        while stored() < sent and time.monotonic() < deadline:
            time.sleep(1)

        readings = [
            r
            for raw in asyncio.run(_read_topic(bootstrap, Topics.READINGS.name, readings_from))
            for r in decode(raw, ReadingBatch).readings
            if r.gateway_id == gateway_id
        ]
        expected = _window_values(readings)
        # the final windows close on the wall clock once the gateway went quiet
        kpis = _device_means(bootstrap, kpi_from, prefix, len(expected), 30)
    finally:
        demo.stop_all()

    assert len({(r.device_id, r.seq) for r in readings}) == sent
    # stored exactly once, counted in the database (this gateway's series only)
    assert stored() == sent
    assert kpis, "no KPI was emitted"

    emitted = {
        (k.device_id, k.quantity.value if k.quantity else "", k.window_start): k for k in kpis
    }
    assert len(emitted) == len(kpis), "a window was emitted twice"
    # every window that saw readings was closed and emitted, quiet or not
    assert set(expected) == set(emitted)
    for key, values in expected.items():
        kpi = emitted[key]
        assert kpi.sample_count == len(values)
        assert kpi.value == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert kpi.window_end - kpi.window_start == WINDOW
