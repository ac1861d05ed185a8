"""A batch with one reading from a device clock 2 h ahead, through the real worker on the
real broker: the batch's other readings make the same KPIs as ``climastream kpi eval``
(which rejects that one line), and the bad reading alone lands on ``dead-letter``.

Before the split, the worker dead-lettered the whole record and its gateway's readings of
that second were missing from every KPI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from climastream.contract import KpiValue, decode, encode
from climastream.stack import Stack
from tests.integration.stream.test_kpi_pipeline import (
    DAILY,
    ROOT,
    Workers,
    _consume,
    _end_offsets,
    _key,
    _readings,
)

pytestmark = pytest.mark.integration


async def _dead_letters(
    bootstrap: str, since: dict[int, int], key: bytes
) -> list[tuple[bytes, dict[str, bytes]]]:
    """(value, headers) of the dead letters with ``key`` after offsets ``since`` (3 s)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        parts = [TopicPartition("dead-letter", p) for p in since]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, since[tp.partition])
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((r.value, dict(r.headers)) for r in records if r.key == key)
    finally:
        await consumer.stop()
    return out


async def _send(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait("readings", value, key=key)
    finally:
        await producer.stop()


def test_one_reading_ahead_is_dead_lettered_alone_and_the_kpis_equal_kpi_eval(
    stack: Stack, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    bootstrap = stack.config.kafka_bootstrap
    config = tmp_path / "stream.yaml"
    config.write_text(
        "window: 5s\ngrace: 1s\neaqi_period: 10s\neaqi_running_periods: 3\n"
        f"reference: {{device_id: ref-{run}}}\n"
        f"zones: {{za-{run}: {{area_km2: 2.0}}, zb-{run}: {{area_km2: 0.5}}, zr-{run}: {{}}}}\n"
        "default_cadence: 1s\n"
    )
    kpi_since = asyncio.run(_end_offsets(bootstrap, "kpi"))
    dead_since = asyncio.run(_end_offsets(bootstrap, "dead-letter"))
    now = datetime.now(UTC).replace(microsecond=0)
    # The worker reads `readings` from the start, after every earlier test's. Readings
    # older than the newest already in a partition would be late there by design (a
    # gateway first heard after the horizon moved on), so these start after anything sent
    # before: a few seconds ahead, well within the contract's clock skew.
    readings = _readings(run, now + timedelta(seconds=1), 20)
    # one record per gateway and second, as a gateway sends them
    records: list[tuple[bytes, bytes]] = []
    ahead: dict[str, object] = {}
    for second in sorted({r.event_time for r in readings}):
        per_gateway: dict[str, list[dict[str, object]]] = {}
        for r in readings:
            if r.event_time == second:
                per_gateway.setdefault(r.gateway_id, []).append(orjson.loads(encode(r)))
        for gateway, items in sorted(per_gateway.items()):
            if gateway == f"gw1-{run}" and not ahead and second > now + timedelta(seconds=8):
                ahead = {**items[0], "device_id": f"fast-clock-{run}", "seq": 1,
                         "event_time": (now + timedelta(hours=2)).isoformat()}  # fmt: skip
                items.insert(1, ahead)
            batch = {"schema_version": 1, "gateway_id": gateway, "readings": items}
            records.append((gateway.encode(), orjson.dumps(batch)))
    assert ahead
    asyncio.run(_send(bootstrap, records))
    lines = [orjson.dumps(item) for _, raw in records for item in orjson.loads(raw)["readings"]]
    (tmp_path / "readings.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    workers = Workers(stack, tmp_path, f"kpi-partial-{run}", config)
    workers.start("a")
    try:
        evaluated = subprocess.run(
            [sys.executable, "-m", "climastream.cli", "kpi", "eval", "--input",
             str(tmp_path / "readings.jsonl"), "--config", str(config)],
            capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        # kpi eval rejects the one line 2 h ahead and keeps every other
        assert evaluated.returncode == 1, evaluated.stderr
        assert b"bad_lines=1" in evaluated.stderr
        expected = {
            _key(k): k
            for k in (decode(line, KpiValue) for line in evaluated.stdout.splitlines())
            if k.kpi_id not in DAILY
        }
        assert len(expected) > 50

        zones = {f"za-{run}", f"zb-{run}", f"zr-{run}"}
        live: dict[tuple[object, ...], KpiValue] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not expected.keys() <= live.keys():
            for raw in asyncio.run(_consume(bootstrap, "kpi", 3, kpi_since)):
                kpi = decode(raw, KpiValue)
                if kpi.zone in zones and kpi.sample_count > 0 and kpi.kpi_id not in DAILY:
                    live.setdefault(_key(kpi), kpi)
        assert live.keys() == expected.keys()
        for key, kpi in expected.items():
            got = live[key]
            assert (got.value, got.sample_count, got.completeness, got.band) == (
                pytest.approx(kpi.value),
                kpi.sample_count,
                pytest.approx(kpi.completeness),
                kpi.band,
            ), key

        # the worker's one dead letter of that record: the reading ahead, named
        key = f"gw1-{run}".encode()
        dead = [d for d in asyncio.run(_dead_letters(bootstrap, dead_since, key))
                if d[1].get("reason") == b"partial-batch"]  # fmt: skip
        assert len(dead) == 1
        value, headers = dead[0]
        assert orjson.loads(value)["readings"] == [ahead]
        assert f"readings.1 (device fast-clock-{run}): ".encode() in headers["error"]
        # a sink or an alert engine on the same readings sends its own: this one says whose
        assert (headers["consumer"], headers["source_topic"]) == (b"stream", b"readings")
    finally:
        workers.stop_all()
