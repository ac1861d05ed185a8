"""``make bench-sink``: points/second into the local VictoriaMetrics, same data, same run.

1. climastream's writer: readings rendered to line protocol (cached series keys), batches
   of 5,000 lines, gzip level 1, precision ns, two requests in flight, each acknowledged.
2. influxdb-client's documented default usage: a ``Point`` per reading and the default
   batching ``write_api()`` (batch_size 1,000, flush_interval 1 s), timed until
   ``close()`` returned, which is when its buffered points have been sent.
3. For reference, the whole sink end to end (``SinkRunner``: Kafka fetch, contract
   decoding, rendering, writing, committing) on the same readings sent to Kafka.

Both writers store the same points (same series and timestamps), so the database ends
with exactly N samples; the script checks that, then prints the figures and the ratio.
Uses the stack of CLIMASTREAM_STACK_DIR / *_PORT (started, and stopped again, if needed).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from climastream.contract import Quantity, Reading, ReadingBatch, encode
from climastream.stack import Stack
from sinks.config import load_config
from sinks.influx import InfluxWriter, SinkRunner
from sinks.lineprotocol import reading_line
from sinks.metrics import SinkMetrics

N = int(os.environ.get("BENCH_SINK_POINTS", "200000"))
BATCH = 5000


def make_readings(run: str, n: int) -> list[Reading]:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=55)
    devices = [f"bench-{run}-d{i}" for i in range(100)]
    return [
        Reading(
            device_id=devices[i % 100],
            gateway_id=f"bench-{run}-g{i % 4}",
            seq=i,
            quantity=Quantity.TEMPERATURE,
            value=10.0 + (i % 200) / 10,
            unit="Cel",
            event_time=base + timedelta(milliseconds=10 * (i // 100)),
            ingest_time=base,
            zone=f"zone-{i % 8}",
        )
        for i in range(n)
    ]


async def bench_ours(url: str, readings: list[Reading]) -> float:
    start = time.perf_counter()
    async with InfluxWriter(url, "climastream", _no_token()) as writer:
        pending: set[asyncio.Task[None]] = set()
        for i in range(0, len(readings), BATCH):
            lines = [reading_line(r) for r in readings[i : i + BATCH]]
            if len(pending) >= 2:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(writer.write("climastream-raw", lines)))
        for task in pending:
            await task
    return time.perf_counter() - start


def _no_token() -> SecretStr:
    return SecretStr("")


def bench_default(url: str, readings: list[Reading]) -> float:
    from influxdb_client import InfluxDBClient, Point, WritePrecision

    start = time.perf_counter()
    client = InfluxDBClient(url=url, token="unused", org="climastream")
    write_api = client.write_api()
    for r in readings:
        point = (
            Point("reading")
            .tag("device", r.device_id)
            .tag("gateway", r.gateway_id)
            .tag("quantity", r.quantity.value)
            .tag("unit", r.unit)
            .tag("zone", r.zone)
            .field("value", r.value)
            .field("seq", r.seq)
            .time(r.event_time, WritePrecision.NS)
        )
        write_api.write(bucket="climastream-raw", record=point)
    write_api.close()
    client.close()
    return time.perf_counter() - start


async def bench_end_to_end(stack: Stack, run: str, readings: list[Reading]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=stack.config.kafka_bootstrap, linger_ms=5)
    await producer.start()
    ends: dict[tuple[str, int], int] = {}
    try:
        futures = []
        by_gateway: dict[str, list[Reading]] = {}
        for r in readings:
            by_gateway.setdefault(r.gateway_id, []).append(r)
        for gateway, own in by_gateway.items():
            for i in range(0, len(own), 500):
                record = ReadingBatch(gateway_id=gateway, readings=tuple(own[i : i + 500]))
                futures.append(
                    await producer.send("readings", encode(record), key=gateway.encode())
                )
        for meta in await asyncio.gather(*futures):
            ends[(meta.topic, meta.partition)] = max(
                ends.get((meta.topic, meta.partition), 0), meta.offset + 1
            )
    finally:
        await producer.stop()
    config = load_config(
        None,
        {
            "kafka": {
                "bootstrap_servers": stack.config.kafka_bootstrap,
                "group_id": f"bench-{run}",
                "session_timeout": 6,
            },
            "influx": {"url": stack.config.tsdb_url},
            "metrics": {"port": 0},
        },
    )
    runner = SinkRunner(config, metrics=SinkMetrics())
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    while not runner.assignment():  # noqa: ASYNC110 - polling the group join
        await asyncio.sleep(0.05)
    start = time.perf_counter()
    while not all(runner.committed.get(k, 0) >= v for k, v in ends.items()):
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    return runner.counters().points / elapsed


def stored(url: str, run: str) -> int:
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10) as resp:
        resp.read()
    query = urllib.parse.urlencode(
        {
            "match[]": f'{{__name__="reading_value",device=~"bench-{run}-.*"}}',
            "start": f"{time.time() - 7200:.0f}",
        }
    )
    total = 0
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=120) as resp:
        for raw in resp:
            if raw.strip():
                total += len(json.loads(raw)["values"])
    return total


def main() -> int:
    stack = Stack()
    started = not all(stack.pid(s) for s in ("kafka", "mqtt", "tsdb"))
    stack.up()
    try:
        url = stack.config.tsdb_url
        run = uuid.uuid4().hex[:8]
        readings = make_readings(run, N)
        warm = make_readings(run + "w", 10_000)
        asyncio.run(bench_ours(url, warm))
        bench_default(url, warm)
        ours = N / asyncio.run(bench_ours(url, readings))
        default = N / bench_default(url, readings)
        count = stored(url, run)
        e2e_run = uuid.uuid4().hex[:8]
        e2e = asyncio.run(bench_end_to_end(stack, e2e_run, make_readings(e2e_run, N)))
    finally:
        if started:
            stack.down()
    print(f"bench-sink: {N} readings into VictoriaMetrics at {url}")
    print(f"  climastream writer (line protocol, 5k batches, gzip): {ours:12,.0f} points/s")
    print(f"  influxdb-client default (Point + batching write_api): {default:12,.0f} points/s")
    print(f"  ratio: {ours / default:.1f}x   (targets: >= 3x and >= 50,000 points/s)")
    print(f"  whole sink end to end (Kafka + decode + write + commit): {e2e:,.0f} points/s")
    print(f"  stored samples after both writers: {count} (expected {N}: rewrites overwrite)")
    return 0 if count == N else 1


if __name__ == "__main__":
    sys.exit(main())
