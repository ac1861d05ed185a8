"""``make bench-stream``: events per CPU-second through the Faust KPI job, against a plain
aiokafka consumer computing the same KPIs (the Python floor), in the same run.

Both consume the same pre-produced topic (ReadingBatch records of 500 readings, 4
partitions) in their own process; CPU seconds are the consuming process's user + system
time (``resource.getrusage``) from its first reading to its last, so start-up and group
joins are not counted.

Quix Streams peer: run when ``BENCH_QUIX=1`` (which creates its virtualenv on demand) or
when that virtualenv already exists (``BENCH_QUIX_VENV``, default ``.venv-quix``); it is kept
out of the project's environment because it brings its own dependency set (confluent-kafka,
rocksdict, ...). ``BENCH_QUIX=0`` disables it. Whenever it does not run, the bench prints
why. What it computes is a subset of our job's work; see ``quix_job``.

``BENCH_PROFILE=<file>`` writes a cProfile (pstats) of the Faust job's measured span.

Three interleaved rounds of floor and job by default (``--rounds``, ``BENCH_ROUNDS``), on
the same topic: this VM's CPU time for the same work varies by 10-20 % from run to run
(single runs of the ratio have ranged 0.47-0.57), so each round is printed and the
medians are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from climastream.contract import Quantity, Reading, ReadingBatch, encode  # noqa: E402
from climastream.quantities import CANONICAL_UNITS  # noqa: E402

CONFIG = "window: 1m\ngrace: 5s\ndefault_cadence: 10s\nzones: {z0: {area_km2: 1}, z1: {}}\n"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def produce(bootstrap: str, topic: str, total: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    # Tansu's DescribeConfigs returns only the configs a topic was created with, and Quix
    # Streams needs retention.ms to derive its changelog topics: set it explicitly.
    configs = {"retention.ms": str(7 * 24 * 3600 * 1000), "retention.bytes": "-1"}
    await admin.create_topics([NewTopic(topic, 4, 1, topic_configs=configs)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    gateways, devices = 8, 40
    seqs: dict[str, int] = {}
    batches: dict[str, list[Reading]] = {}
    sent = 0
    step = 0
    while sent < total:
        at = start + timedelta(seconds=5 * step)
        step += 1
        for d in range(devices):
            gateway = f"bgw{d % gateways}"
            device = f"bdev{d}"
            for name, value in (("temperature", 20.0 + d % 7), ("relative_humidity", 55.0)):
                q = Quantity(name)
                seq = seqs.get(device, 0)
                seqs[device] = seq + 1
                batches.setdefault(gateway, []).append(
                    Reading(device_id=device, gateway_id=gateway, seq=seq, quantity=q,
                            value=value + step % 3, unit=CANONICAL_UNITS[q], event_time=at,
                            ingest_time=at, zone=f"z{d % 2}")
                )  # fmt: skip
                sent += 1
        for gateway, readings in list(batches.items()):
            if len(readings) >= 500 or sent >= total:
                record = ReadingBatch(gateway_id=gateway, readings=tuple(readings))
                await producer.send(topic, encode(record), key=record.key)
                batches[gateway] = []
    await producer.stop()


# ------------------------------------------------------------------ the floor


async def floor(bootstrap: str, topic: str, total: int, config_path: str) -> dict[str, float]:
    """Plain aiokafka consumer: contract decode + the same two KPI stages, partitioned as
    the job partitions them.

    Stage 1 is one :class:`DeviceWindows` per ``readings`` partition and stage 2 one
    :class:`ZoneWindows` that waits for the watermarks of *all* those partitions, exactly
    like the job's stage 2. (A single-source ``Replay`` would let the zone watermark run
    ahead of partitions the consumer has not fetched yet; their device windows then
    arrive "stale" and are skipped, so the floor would do less work than the job, and how
    much less would depend on the fetch interleaving of the run.)
    """
    from aiokafka import AIOKafkaConsumer

    from climastream.contract import decode_batch
    from stream.config import StreamConfig
    from stream.windows import DeviceWindows
    from stream.zones import ZoneWindows, routing_keys

    config = StreamConfig.load(config_path)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    sources = len(consumer.partitions_for_topic(topic) or ()) or 4
    stage1: dict[int, DeviceWindows] = {}
    zones = ZoneWindows(config, sources=sources)
    seen = kpis = 0
    cpu0 = 0.0
    while seen < total:
        batch = await consumer.getmany(timeout_ms=1000, max_records=100)
        for tp, records in batch.items():
            engine = stage1.get(tp.partition)
            if engine is None:
                engine = stage1[tp.partition] = DeviceWindows(
                    config.window, config.grace, zones=config.device_zones, tz=config.tz
                )
            for record in records:
                if seen == 0:
                    cpu0 = cpu()
                readings = decode_batch(record.value).readings  # as the job decodes
                engine.add(readings)
                for partial in engine.close():
                    for key, reference in routing_keys(partial, config):
                        zones.add(key, partial, reference, str(tp.partition))
                horizon = engine.horizon()
                if horizon is not None:
                    zones.advance(str(tp.partition), horizon)
                    kpis += len(zones.close())
                seen += len(readings)
    cpu1 = cpu()
    await consumer.stop()
    z = zones.stats
    return {"events": seen, "cpu_s": cpu1 - cpu0, "kpis": kpis, "partials": z.partials,
            "stale": z.stale_partials}  # fmt: skip


# ------------------------------------------------------------------ the Faust job


def faust_job(bootstrap: str, topic: str, total: int, config_path: str, out: str) -> None:

    from stream.app import StreamSettings, create_app, create_worker, ensure_topics
    from stream.config import StreamConfig

    settings = StreamSettings(
        bootstrap_servers=bootstrap, app_id=f"bench-{uuid.uuid4().hex[:8]}",
        config=StreamConfig.load(config_path), readings_topic=topic,
        data_dir=f"/tmp/{uuid.uuid4().hex[:8]}-faust",
    )  # fmt: skip
    asyncio.run(ensure_topics(settings))
    app = create_app(settings)
    marks: dict[str, float] = {}

    stage1, stage2 = app.climastream_stages
    metrics = app.climastream_metrics
    # BENCH_PROFILE=<file>: cProfile the job between the two CPU marks (pstats format)
    profile_to = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    partitions = 4

    def zone_watermark() -> int:
        marks_ = [part.engine.watermark() for part in stage2.values()]
        if len(marks_) < partitions or None in marks_:
            return -1
        return min(marks_)

    @app.timer(0.05)
    async def watch() -> None:
        seen = metrics.readings
        if seen and "cpu0" not in marks:
            marks["cpu0"], marks["seen0"] = cpu(), seen
            if profiler is not None:
                profiler.enable()
        if seen >= total and "target" not in marks:
            # stage 1 has every reading; the run ends when stage 2 has caught up with what
            # stage 1 has closed by now (the floor's figure includes its zone work too)
            horizons = [part.engine.horizon() for part in stage1.values()]
            marks["target"] = min((h for h in horizons if h is not None), default=0)
        if "target" in marks and "cpu1" not in marks and zone_watermark() >= marks["target"]:
            marks["cpu1"] = cpu()
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(profile_to))
            zone_stats = [part.engine.stats for part in stage2.values()]
            result = {
                "events": seen - marks["seen0"],
                "cpu_s": marks["cpu1"] - marks["cpu0"],
                "store": str(app.conf.store),
                "kpis": metrics.kpis,
                "partials": sum(z.partials for z in zone_stats),
                "stale": sum(z.stale_partials for z in zone_stats),
                "checkpoints": metrics.checkpoints,
            }
            with open(out, "w") as handle:  # noqa: ASYNC230 - once, at the end
                handle.write(json.dumps(result))
            os.kill(os.getpid(), 15)

    create_worker(app, "warning").execute_from_commandline()


# ------------------------------------------------------------------ the Quix Streams peer

QUIX_REQUIREMENT = "quixstreams>=3.28,<4"


def quix_job(bootstrap: str, topic: str, total: int, out: str) -> None:
    """Quix Streams peer, run with the Quix virtualenv's Python.

    It does the core of our stage 1 and no more: decode each ReadingBatch record with the
    same contract code, expand it into readings, take each reading's event time as the
    record timestamp, and keep a 1 min tumbling window (5 s grace, as the bench config) per
    gateway key whose value maps ``device|quantity`` to sum/count/min/max; Quix emits each
    window once its partition's timestamps pass end + grace (``.final()``), giving the
    per-device ``stat.mean``/``min``/``max``/``count``. State is Quix's RocksDB store with
    its changelog topic, committed every second like our job's checkpoints. Not done here,
    but done by our job: dedupe by (device, seq), late-reading routing and counting,
    completeness, p95, heat/noise/EAQI KPIs, wall-clock window closing, the zone stage and
    producing KpiValues to Kafka. So its figure is an upper bound for a Quix job doing our
    work. Keyed per gateway (as our stage 1 is per partition) rather than with
    ``group_by(device)``, which would add a repartition topic round trip per reading.
    """
    from datetime import timedelta as td

    from quixstreams import Application

    from climastream.contract import decode

    marks: dict[str, float] = {}
    seen = 0
    closed = 0
    state_dir = f"/tmp/bench-quix-{uuid.uuid4().hex[:8]}"
    app = Application(
        broker_address=bootstrap, consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", commit_interval=1.0, loglevel="WARNING",
        state_dir=state_dir,
        # Tansu holds a group join for half the session timeout
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )  # fmt: skip
    sdf = app.dataframe(app.topic(topic, key_deserializer="str", value_deserializer="bytes"))

    def expand(raw: bytes) -> list[tuple[str, float, int]]:
        if not marks:
            marks["cpu0"] = cpu()
        return [
            (f"{r.device_id}|{r.quantity.value}", r.value, int(r.event_time.timestamp() * 1000))
            for r in decode(raw, ReadingBatch).readings
        ]

    def count(row: tuple[str, float, int]) -> None:
        nonlocal seen
        seen += 1
        if seen >= total and "cpu1" not in marks:
            marks["cpu1"] = cpu()
            app.stop()

    def reduce(agg: dict[str, list[float]], row: tuple[str, float, int]) -> dict[str, list[float]]:
        acc = agg.get(row[0])
        if acc is None:
            agg[row[0]] = [row[1], 1, row[1], row[1]]
        else:
            acc[0] += row[1]
            acc[1] += 1
            acc[2] = min(acc[2], row[1])
            acc[3] = max(acc[3], row[1])
        return agg

    def emit(window: dict[str, dict[str, list[float]]]) -> None:
        nonlocal closed
        means = {key: acc[0] / acc[1] for key, acc in window["value"].items()}
        closed += len(means)

    sdf = sdf.apply(expand, expand=True).set_timestamp(lambda value, key, ts, headers: value[2])
    sdf = sdf.update(count)
    window = sdf.tumbling_window(td(minutes=1), grace_ms=5000)
    window.reduce(reduce, lambda row: reduce({}, row)).final().update(emit)
    try:
        app.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    result = {"events": seen, "cpu_s": marks["cpu1"] - marks["cpu0"], "windows": closed}
    Path(out).write_text(json.dumps(result))


def quix_python() -> tuple[Path | None, str]:
    """The Quix virtualenv's Python, created if ``BENCH_QUIX=1``; else None and why not."""
    venv = Path(os.environ.get("BENCH_QUIX_VENV", ROOT / ".venv-quix"))
    python = venv / "bin" / "python"
    wanted = os.environ.get("BENCH_QUIX", "")
    if wanted == "0":
        return None, "disabled by BENCH_QUIX=0"
    ready = python.exists() and subprocess.run(
        [python, "-c", "import quixstreams, pydantic, orjson"], capture_output=True, check=False
    ).returncode == 0  # fmt: skip
    if ready:
        return python, ""
    if wanted != "1":
        return None, (f"no Quix Streams virtualenv at {venv}; run with BENCH_QUIX=1 to "
                      f"create it and install {QUIX_REQUIREMENT} there")  # fmt: skip
    with (ROOT / "pyproject.toml").open("rb") as handle:
        core = tomllib.load(handle)["project"]["dependencies"]  # the contract's own deps
    print(f"bench-stream: installing {QUIX_REQUIREMENT} into {venv}")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", QUIX_REQUIREMENT, *core]]  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"{' '.join(step[:4])} failed: {' / '.join(tail)}"
    return python, ""


def work(result: dict[str, float]) -> str:
    """The work done, to check both sides did the same (KPI counts differ a little: the job
    also closes the last windows on the wall clock once it is caught up)."""
    return (f"{result['partials']:.0f} device windows into the zone stage, "
            f"{result['stale']:.0f} stale, {result['kpis']:.0f} KPIs")  # fmt: skip


class ChildFailed(RuntimeError):
    """A measured child exited without a result; the message carries its last error."""


def child(kind: str, args: list[str], python: str | Path = sys.executable) -> dict[str, float]:
    out = f"/tmp/bench-stream-{uuid.uuid4().hex[:8]}.json"
    try:
        done = subprocess.run(
            [python, __file__, "--child", kind, "--out", out, *args],
            check=False, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{kind} did not finish within 600 s") from None
    if not Path(out).exists():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ChildFailed(f"{kind} exited {done.returncode}: {lines[-1] if lines else '?'}")
    return dict(json.loads(Path(out).read_text()))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")),
        help="interleaved rounds of floor and job; medians are the result",
    )  # fmt: skip
    parser.add_argument("--child")
    parser.add_argument("--out")
    parser.add_argument("--bootstrap")
    parser.add_argument("--topic")
    parser.add_argument("--config")
    args = parser.parse_args()
    if args.child == "floor":
        result = asyncio.run(floor(args.bootstrap, args.topic, args.events, args.config))
        Path(args.out).write_text(json.dumps(result))
        return 0
    if args.child == "faust":
        faust_job(args.bootstrap, args.topic, args.events, args.config, args.out)
        return 0
    if args.child == "quix":
        quix_job(args.bootstrap, args.topic, args.events, args.out)
        return 0

    from climastream.stack import Stack, StackConfig

    stack = Stack(StackConfig())
    started = not all(stack.pid(s) for s in ("kafka", "mqtt", "tsdb"))
    stack.up()
    try:
        bootstrap = stack.config.kafka_bootstrap
        topic = f"bench-readings-{uuid.uuid4().hex[:8]}"
        config = Path(f"/tmp/{topic}.yaml")
        config.write_text(CONFIG)
        t0 = time.monotonic()
        asyncio.run(produce(bootstrap, topic, args.events))
        print(f"bench-stream: produced {args.events} readings in {time.monotonic() - t0:.1f}s")
        common = ["--bootstrap", bootstrap, "--topic", topic, "--config", str(config),
                  "--events", str(args.events)]  # fmt: skip
        floor_rates: list[float] = []
        job_rates: list[float] = []
        for round_ in range(args.rounds):
            base = child("floor", common)
            job = child("faust", common)
            floor_rates.append(base["events"] / base["cpu_s"])
            job_rates.append(job["events"] / job["cpu_s"])
            ratio = job_rates[-1] / floor_rates[-1]
            print(f"bench-stream: round {round_ + 1}: floor {floor_rates[-1]:,.0f}, "
                  f"job {job_rates[-1]:,.0f}, ratio {ratio:.2f}")  # fmt: skip
        floor_rate = statistics.median(floor_rates)
        job_rate = statistics.median(job_rates)
        ratios = sorted(j / f for j, f in zip(job_rates, floor_rates, strict=True))
        print(f"bench-stream: median of {args.rounds} rounds (work of the last round shown)")
        print(f"bench-stream: aiokafka floor  {floor_rate:10,.0f} events/CPU-s "
              f"({base['events']:.0f} events, {base['cpu_s']:.2f} CPU-s; "
              f"{work(base)})")  # fmt: skip
        print(f"bench-stream: faust KPI job   {job_rate:10,.0f} events/CPU-s "
              f"({job['events']:.0f} events, {job['cpu_s']:.2f} CPU-s, "
              f"store {job['store']}; {work(job)}, "
              f"{job['checkpoints']:.0f} checkpoints)")  # fmt: skip
        print(f"bench-stream: ratio job/floor {job_rate / floor_rate:.2f} "
              f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f}; "
              f"targets: >= 20,000 events/CPU-s and >= 0.5 x floor)")  # fmt: skip
        python, why = quix_python()
        if python is None:
            print(f"bench-stream: quix streams peer skipped: {why}")
        else:
            try:
                peer = child("quix", common, python)
            except ChildFailed as error:
                print(f"bench-stream: quix streams peer failed against the local broker: {error}")
            else:
                peer_rate = peer["events"] / peer["cpu_s"]
                print(f"bench-stream: quix streams    {peer_rate:10,.0f} events/CPU-s "
                      f"({peer['events']:.0f} events, {peer['cpu_s']:.2f} CPU-s, "
                      f"{peer['windows']:.0f} device windows; per-device mean/min/max/"
                      f"count only)")  # fmt: skip
                print(f"bench-stream: ratio quix/floor {peer_rate / floor_rate:.2f}, "
                      f"job/quix {job_rate / peer_rate:.2f}")  # fmt: skip
    finally:
        if started:
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
