"""``make bench-edge``: readings per CPU-second through the whole gateway agent.

Both sides run in this process against the same real Kafka-protocol broker (Tansu, the
local stack), one after the other:

* **agent**: pre-encoded wire bytes of 200 sensor nodes (the framed serial protocol, one
  frame per node and tick carrying temperature, humidity and PM2.5) go through the agent's
  real path: the serial source's decode (``firmware_bridge`` stream decoder and sample
  conversion, minus the port I/O), the source queue and writer, both ONNX models (anomaly
  score on temperature, humidity correction of PM2.5), contract validation, the SQLite
  buffer (fsync_window 1 s), ReadingBatch records built from stored payloads, the aiokafka
  producer (the gateway's default compression, or ``--compression``), acks and deletes.
* **raw producer**: a bare aiokafka producer sending the very ReadingBatch records the
  agent produced (pre-encoded, same key, same compression), awaiting every ack. This is
  the baseline of the ratio. It pays little more than the compression per reading, so
  the ratio moves with the codec: zstd (the gateway's default) makes the agent a fifth
  cheaper and the baseline about eight times cheaper.
* **for context**: the same raw producer sending the same readings as one record each
  (keyed by device, 2,000 in flight): what the baseline would be had the contract chosen
  a record per reading. Printed, not used for the ratio.

All of it goes to this run's own topics (``bench-edge-<id>``, deleted at the end), never to
the real ``readings``: a demo, stream worker or sink on the same stack would consume a
benchmark backlog (the one-record-per-reading baseline is not even a contract record).

CPU time is process CPU (user + system, every thread: the agent's worker thread too)
measured with ``time.process_time``; the broker runs in its own process and is not
counted. Each side's one-off start-up is left out the same way: the raw producer's
connect, and the agent's buffer open and model loading (printed separately); the agent's
window opens when it starts its sources and closes when Kafka acked the last reading.
Three interleaved rounds by default (``--rounds``): this VM's CPU time for the same work
varies by 10-20 % from run to run, so each round's figures are printed and the medians
are the result. Prints both rates, their ratio and the process's peak RSS (both models
loaded).
With ``--ceiling`` each round also runs the agent twice more, as what-ifs that bound what
a compiled hot path could reach (printed, never the result):

* **pre-decoded**: the source hands over the very samples the serial decode produced
  (decode and sample conversion cost nothing);
* **ceiling**: that, and validation plus JSON encoding replaced by a lookup of the real
  run's bytes for each (device, seq): only the models, the durable buffer, building the
  records, the event loop and the producer are left.

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edge.agent  # noqa: E402
from climastream.contract import Quantity, SourceState  # noqa: E402
from climastream.stack import Stack, StackConfig  # noqa: E402
from edge.agent import Agent  # noqa: E402
from edge.config import GatewayConfig, KafkaConfig  # noqa: E402
from edge.metrics import status_kib  # noqa: E402
from edge.sources import Sample  # noqa: E402
from edge.sources.convert import to_samples  # noqa: E402
from edge.uplink import KafkaUplink  # noqa: E402


class ReplaySource:
    """Feeds pre-encoded serial bytes through the serial source's decode path.

    Exactly what :class:`edge.sources.serial_source.SerialSource` does with each read of
    the port (stream decoder, then :func:`edge.sources.convert.to_samples`), without the
    port: reads of 4 KiB, as fast as the agent takes them.
    """

    name = "replay"
    read_size = 4096

    def __init__(self, wire: bytes) -> None:
        from firmware_bridge.codecs import stream_decoder

        self._wire = wire
        self._offset = 0
        self._decoder = stream_decoder("framed")
        self._errors: dict[str, int] = {}
        self.done = asyncio.Event()
        self.started_cpu: float | None = None

    @property
    def state(self) -> SourceState:
        return SourceState.UP

    @property
    def decode_errors(self) -> dict[str, int]:
        return dict(self._errors)

    async def start(self) -> None:
        # the agent starts sources last, after opening the buffer and loading both models
        self.started_cpu = time.process_time()

    def _decode(self, chunk: bytes) -> list[Sample]:
        """One read's bytes through the serial source's decode path."""
        return to_samples(
            self._decoder.feed(chunk), errors=self._errors, now=lambda: datetime.now(UTC)
        )

    async def read(self) -> list[Sample]:
        if self._offset >= len(self._wire):
            self.done.set()
            await asyncio.sleep(3600)
        chunk = self._wire[self._offset : self._offset + self.read_size]
        self._offset += self.read_size
        return self._decode(chunk)

    async def stop(self) -> None:
        return None


class PreDecodedSource(ReplaySource):
    """``--ceiling`` what-if: the samples of each 4 KiB read, decoded before the clock starts."""

    def __init__(self, wire: bytes) -> None:
        super().__init__(b"")
        self._chunks = [
            self._decode(wire[i : i + self.read_size]) for i in range(0, len(wire), self.read_size)
        ]
        self._chunks.reverse()

    async def read(self) -> list[Sample]:
        if not self._chunks:
            self.done.set()
            await asyncio.sleep(3600)
        return self._chunks.pop()


class LookupEncoder:
    """``--ceiling`` what-if: stands in for :class:`ReadingEncoder` inside ``Agent.ingest``,
    returning the bytes a real run encoded for the same (device, seq)."""

    table: ClassVar[dict[tuple[str, int], bytes]] = {}

    def __init__(self, now: datetime) -> None:
        del now

    def encode(self, reading: dict[str, Any]) -> bytes:
        return self.table[(reading["device_id"], reading["seq"])]


def encoded_readings(records: list[tuple[str, bytes, bytes]]) -> dict[tuple[str, int], bytes]:
    """Each reading's bytes in a run's ReadingBatch records, by (device, seq)."""
    table = {}
    for _, _, value in records:
        for reading in orjson.loads(value)["readings"]:
            table[(reading["device_id"], reading["seq"])] = orjson.dumps(reading)
    return table


class RecordingUplink(KafkaUplink):
    """The real uplink, keeping a copy of every readings record for the baseline."""

    def __init__(self, config: KafkaConfig, client_id: str) -> None:
        super().__init__(config, client_id)
        self.readings_topic = config.readings_topic
        self.records: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> Any:
        if topic == self.readings_topic:
            self.records.append((topic, key, value))
        return await super().send(topic, key, value)


def make_wire(total: int, devices: int = 200) -> bytes:
    """Framed-protocol frames for ``total`` readings: 3 per frame, one frame per node tick."""
    from firmware_bridge.serial_codecs.framed import encode_frame

    start = datetime.now(UTC) - timedelta(minutes=30)
    frames = []
    for i in range(-(-total // 3)):
        tick = i // devices
        frames.append(
            encode_frame(
                f"node-{i % devices:03d}",
                tick,
                start + timedelta(seconds=tick),
                [
                    (Quantity.TEMPERATURE, 20.0 + (i % 17) * 0.1, 0),
                    (Quantity.RELATIVE_HUMIDITY, 60.0 + (i % 7), 0),
                    (Quantity.PM2_5, 10.0 + (i % 13), 0),
                ],
            )
        )
    return b"".join(frames)


def make_samples(total: int, batch: int = 500) -> list[list[Sample]]:
    """The readings of :func:`make_wire` through the serial source's decode path, in
    ingest batches of ``batch`` (``benchmarks/bench_edge_buffer.py`` uses these)."""
    from firmware_bridge.codecs import stream_decoder

    errors: dict[str, int] = {}
    samples = to_samples(
        stream_decoder("framed").feed(make_wire(total)),
        errors=errors,
        now=lambda: datetime.now(UTC),
    )
    assert not errors, errors
    return [samples[i : i + batch] for i in range(0, len(samples), batch)]


#: the uplink's compression unless ``--compression`` says otherwise: what a gateway ships with
DEFAULT_COMPRESSION = str(KafkaConfig.model_fields["compression"].default)


def config(
    bootstrap: str, buffer: Path, topic: str = "readings", compression: str = DEFAULT_COMPRESSION
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway_id": "gw-bench",
            "kafka": {
                "bootstrap_servers": bootstrap,
                "linger_ms": 5,
                "compression": compression,
                "readings_topic": topic,
                "status_topic": f"{topic}-status",
            },
            "buffer": {"path": str(buffer), "fsync_window_s": 1.0},
            "batch_max_readings": 2000,
            "batch_max_wait_s": 0.01,
            "status_interval_s": 3600,
            "metrics": {"listen": None},
            "models": [
                {
                    "id": "sensor-anomaly",
                    "path": str(ROOT / "edge/models/sensor_anomaly.onnx"),
                    "devices": ["node-*"],
                    "quantity": "temperature",
                    "inputs": [{"window": 16}],
                    "outputs": [{"kind": "score", "threshold": 0.9}],
                },
                {
                    "id": "pm-humidity",
                    "path": str(ROOT / "edge/models/pm_humidity_correction.onnx"),
                    "devices": ["node-*"],
                    "quantity": "pm2_5",
                    "inputs": [{"quantity": "pm2_5"}, {"quantity": "relative_humidity"}],
                    "outputs": [{"kind": "correct"}],
                },
            ],
            "sources": [
                {
                    "kind": "simulated",
                    "devices": [{"device_id": "x", "quantities": ["temperature"]}],
                }
            ],
        }
    )


async def bench_agent(
    bootstrap: str,
    total: int,
    workdir: Path,
    topic: str,
    what_if: str | None = None,
    compression: str = DEFAULT_COMPRESSION,
) -> tuple[float, int, RecordingUplink]:
    """The agent's CPU-seconds, readings sent and uplink; ``what_if``: ``pre-decoded`` or
    ``ceiling`` (see the module docstring), None for the real path."""
    cfg = config(bootstrap, workdir / "bench.db", topic, compression)
    source = (ReplaySource if what_if is None else PreDecodedSource)(make_wire(total))
    uplink = RecordingUplink(cfg.kafka, client_id="gw-bench")
    await uplink.send_and_wait(f"{topic}-status", b"warmup", b"{}")  # connect outside timing
    # tune_gc as ``climastream edge run`` does (process-wide: the raw baseline after it
    # runs under the same collector settings)
    agent = Agent(cfg, sources=[source], uplink=uplink, drain_timeout_s=120, tune_gc=True)
    stop = asyncio.Event()
    cpu0 = time.process_time()
    real_encoder = edge.agent.ReadingEncoder
    if what_if == "ceiling":
        edge.agent.ReadingEncoder = LookupEncoder  # type: ignore[misc, assignment]
    try:
        task = asyncio.create_task(agent.run(stop))
        total = 3 * -(-total // 3)
        while agent.counters.sent < total - agent.counters.dropped.get("invalid_reading", 0):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert not source.decode_errors, source.decode_errors
        cpu_end = time.process_time()
        stop.set()
        await task
    finally:
        edge.agent.ReadingEncoder = real_encoder  # type: ignore[misc]
    assert source.started_cpu is not None
    startup = source.started_cpu - cpu0
    if what_if is None:
        print(f"  (agent start-up, not counted: {startup:.2f} CPU-s: buffer open, models load)")
    return cpu_end - source.started_cpu, agent.counters.sent, uplink


async def bench_raw(
    bootstrap: str,
    records: list[tuple[str, bytes, bytes]],
    window: int = 4,
    compression: str = DEFAULT_COMPRESSION,
) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        compression_type=None if compression == "none" else compression,
        max_batch_size=4 * 1024 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        await producer.send_and_wait(records[0][0], b"{}", key=b"warmup")
        cpu0 = time.process_time()
        futures = []
        for topic, key, value in records:
            futures.append(await producer.send(topic, value=value, key=key))
            if len(futures) >= window:
                await futures.pop(0)
        for future in futures:
            await future
        return time.process_time() - cpu0
    finally:
        await producer.stop()


def process_memory(pid: int) -> dict[str, float]:
    """A process's ``VmRSS``, ``VmHWM``, ``RssAnon`` and ``RssFile`` from
    ``/proc/<pid>/status``, in MB."""
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    return {
        name: kib / 1024 for name, kib in status_kib(Path(f"/proc/{pid}/status"), fields).items()
    }


def agent_process_rss(bootstrap: str, topic: str) -> dict[str, float]:
    """Run ``climastream edge run`` on the demo gateway (both models) and read, in MB, its
    peak RSS (``VmHWM``) and, at the end, its RSS split into anonymous memory (``RssAnon``:
    heaps, what only swap could take back) and file-backed pages (``RssFile``: the code of
    onnxruntime, numpy, Python..., clean pages the kernel can drop under memory pressure
    and read back from the file).

    The demo config is copied with this run's own topics, so its readings do not land in
    the real ``readings`` topic that a demo or sink on the same stack consumes.
    """
    import signal
    import subprocess

    import yaml

    demo = yaml.safe_load((ROOT / "deploy/local/demo-gateway.yaml").read_text())
    demo["kafka"]["readings_topic"] = topic
    demo["kafka"]["status_topic"] = f"{topic}-status"
    with tempfile.TemporaryDirectory() as tmp:
        gateway = Path(tmp) / "gateway.yaml"
        gateway.write_text(yaml.safe_dump(demo))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "climastream.cli",
                "edge",
                "run",
                "--config",
                str(gateway),
                "--kafka",
                bootstrap,
                "--buffer",
                str(Path(tmp) / "rss.db"),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(20)
        memory = process_memory(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return memory


async def main(total: int, rounds: int, ceiling: bool, compression: str) -> None:
    stack = Stack(StackConfig())
    started = not all(stack.pid(s) for s in ("kafka", "mqtt", "tsdb"))
    stack.up()
    try:
        await _main(stack, total, rounds, ceiling, compression)
    finally:
        if started:
            stack.down()


async def bench_topics(bootstrap: str, topic: str, *, delete: bool = False) -> None:
    """Create (or delete) this run's own topics: the bench never writes to the real
    ``readings`` / ``gateway-status``, which a demo or sink on the same stack consumes."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if delete:
            await admin.delete_topics([topic, f"{topic}-status"])
        else:
            await admin.create_topics([NewTopic(topic, 4, 1), NewTopic(f"{topic}-status", 1, 1)])
    finally:
        await admin.close()


async def _main(stack: Stack, total: int, rounds: int, ceiling: bool, compression: str) -> None:
    bootstrap = stack.config.kafka_bootstrap
    topic = f"bench-edge-{uuid.uuid4().hex[:8]}"
    await bench_topics(bootstrap, topic)
    try:
        await _measure(bootstrap, total, topic, rounds, ceiling=ceiling, compression=compression)
    finally:
        with contextlib.suppress(Exception):
            await bench_topics(bootstrap, topic, delete=True)


async def _measure(
    bootstrap: str,
    total: int,
    topic: str,
    rounds: int,
    *,
    ceiling: bool = False,
    compression: str = DEFAULT_COMPRESSION,
) -> None:
    """``rounds`` interleaved rounds of agent, raw and one-record-per-reading producer
    (and with ``ceiling`` the two what-ifs); medians are the figures (this VM's CPU time
    per run varies by 10-20 %)."""
    what_ifs: dict[str, list[float]] = {"pre-decoded": [], "ceiling": []} if ceiling else {}
    agent_rates: list[float] = []
    raw_rates: list[float] = []
    single_rates: list[float] = []
    sent = records = 0
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            cpu_agent, sent, uplink = await bench_agent(
                bootstrap, total, Path(tmp), topic, compression=compression
            )
        records = len(uplink.records)
        readings_in_records = sum(value.count(b'"seq"') for _, _, value in uplink.records)
        cpu_raw = await bench_raw(bootstrap, uplink.records, compression=compression)
        # context only: the same readings as one Kafka record each (the record shape the
        # contract did not choose), keyed by device, many in flight
        single = [
            (topic, reading["device_id"].encode(), orjson.dumps(reading))
            for _, _, value in uplink.records
            for reading in orjson.loads(value)["readings"]
        ]
        cpu_single = await bench_raw(bootstrap, single, window=2000, compression=compression)
        if what_ifs:
            LookupEncoder.table = encoded_readings(uplink.records)
        for what_if, rates in what_ifs.items():
            with tempfile.TemporaryDirectory() as tmp:
                cpu, n, _ = await bench_agent(
                    bootstrap, total, Path(tmp), topic, what_if, compression
                )
            rates.append(n / cpu)
        agent_rates.append(sent / cpu_agent)
        raw_rates.append(readings_in_records / cpu_raw)
        single_rates.append(len(single) / cpu_single)
        print(
            f"  round {round_ + 1}: agent {agent_rates[-1]:,.0f}, raw {raw_rates[-1]:,.0f}, "
            f"ratio {agent_rates[-1] / raw_rates[-1]:.2f}; one record per reading "
            f"{single_rates[-1]:,.0f} readings/CPU-s"
            + "".join(f"; {name} {rates[-1]:,.0f}" for name, rates in what_ifs.items())
        )
    agent_rate = statistics.median(agent_rates)
    raw_rate = statistics.median(raw_rates)
    single_rate = statistics.median(single_rates)
    ratios = sorted(a / r for a, r in zip(agent_rates, raw_rates, strict=True))
    for name, rates in what_ifs.items():
        rate = statistics.median(rates)
        print(
            f"  what-if {name}: {rate:,.0f} readings/CPU-s, ratio {rate / raw_rate:.2f} "
            f"(not the result: see --help)"
        )
    rss = agent_process_rss(bootstrap, topic)
    print(
        f"bench-edge: {sent} readings, {records} records, {compression} compression, "
        f"median of {rounds} rounds"
    )
    print(
        f"  agent (decode, validate, 2 models, SQLite buffer, produce): "
        f"{agent_rate:,.0f} readings/CPU-s"
    )
    print(
        f"  raw aiokafka producer, same pre-encoded records:           "
        f"{raw_rate:,.0f} readings/CPU-s"
    )
    print(
        f"  ratio agent/raw: {agent_rate / raw_rate:.2f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
        f"   (targets: >= 30,000/CPU-s, >= 0.5)"
    )
    print(
        f"  for context, raw aiokafka sending one record per reading:   "
        f"{single_rate:,.0f} readings/CPU-s (agent/that {agent_rate / single_rate:.2f})"
    )
    print(
        f"  agent process peak RSS (VmHWM), both models loaded, 20 s of the demo gateway: "
        f"{rss['VmHWM']:.0f} MB (target <= 100 MB); at the end {rss['RssAnon']:.0f} MB "
        f"anonymous + {rss['RssFile']:.0f} MB file-backed (library code)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=int(os.environ.get("BENCH_ROUNDS", "3")),
        help="interleaved rounds (median); default $BENCH_ROUNDS or 3",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also run the what-ifs: decode free (pre-decoded), then decode, validation and "
        "encoding free (ceiling); bounds what a compiled hot path could reach",
    )
    parser.add_argument(
        "--compression",
        choices=["none", "gzip", "lz4", "zstd", "snappy"],
        default=DEFAULT_COMPRESSION,
        help=f"the uplink's and the baseline's compression (default: the gateway's own "
        f"default, {DEFAULT_COMPRESSION})",
    )
    args = parser.parse_args()
    asyncio.run(main(args.readings, args.rounds, args.ceiling, args.compression))
