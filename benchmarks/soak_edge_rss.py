"""``make bench-edge-rss``: the gateway agent's resident memory over a long run.

``make bench-edge`` reads the agent's peak RSS after 20 s of the demo gateway. Memory that
creeps (fragmentation, state keyed by something unbounded, a library's cycles waiting for
the collector) shows only over tens of minutes, and sooner at a higher rate. This runs the
real ``climastream edge run`` on the demo gateway (both models) and the demo's virtual
devices (``climastream simulate``: serial sensors on pseudo-terminals, LoRaWAN uplinks and
MQTT stations through the stack's Mosquitto), every cadence and period divided by
``--speed``, for ``--minutes``, against the local stack. Each minute it prints the agent's
RSS, split into anonymous memory (heaps: what only swap could take back) and file-backed
pages (library code the kernel can drop under pressure and read back), and the rate.

The baseline, measured in the same run, is the RSS after the first minute (start-up and
warm-up done); the result is the RSS at the end and its ratio to that baseline. Readings
go to this run's own topics, deleted at the end, never to the real ``readings``.

A benchmark, not a test: nothing is asserted. Run it on the hardware you plan for (a Pi's
aarch64 wheels map differently from this x86 VM's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_edge import bench_topics, process_memory  # noqa: E402

from climastream.stack import Stack, StackConfig  # noqa: E402


def configs(workdir: Path, topic: str, speed: float, mqtt_port: int) -> tuple[Path, Path]:
    """The demo gateway and fleet, ``speed`` times faster, writing to ``topic``."""
    gateway = yaml.safe_load((ROOT / "deploy/local/demo-gateway.yaml").read_text())
    gateway["kafka"]["readings_topic"] = topic
    gateway["kafka"]["status_topic"] = f"{topic}-status"
    gateway["metrics"] = {"listen": None}
    for model in gateway["models"]:
        model["path"] = str(ROOT / model["path"])
    for source in gateway["sources"]:
        if source["kind"] == "simulated":
            source["cadence_s"] = source.get("cadence_s", 1.0) / speed
    fleet: dict[str, Any] = yaml.safe_load((ROOT / "deploy/local/demo-fleet.yaml").read_text())
    fleet["mqtt"]["port"] = mqtt_port
    for group in ("serial", "lorawan", "mqtt_json"):
        for device in fleet.get(group, []):
            device["period_s"] = device.get("period_s", 1.0) / speed
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(gateway))
    (workdir / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    return workdir / "gateway.yaml", workdir / "fleet.yaml"


def sent(status_file: Path) -> int | None:
    try:
        return int(json.loads(status_file.read_text())["readings_sent_total"])
    except (OSError, ValueError, KeyError):
        return None


def soak(stack: Stack, minutes: float, speed: float) -> None:
    bootstrap = stack.config.kafka_bootstrap
    topic = f"bench-edge-rss-{uuid.uuid4().hex[:8]}"
    asyncio.run(bench_topics(bootstrap, topic))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            gateway, fleet = configs(work, topic, speed, stack.config.mqtt_port)
            (work / ".demo").mkdir()  # the devices' pseudo-terminal links, as in the demo
            env = {**os.environ, **stack.env(), "PYTHONPATH": str(ROOT)}
            cli = [sys.executable, "-m", "climastream.cli"]
            devices = subprocess.Popen(
                [*cli, "simulate", "--config", str(fleet)],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            status_file = work / "status.json"
            run = ["edge", "run", "--config", str(gateway), "--kafka", bootstrap]
            files = ["--buffer", str(work / "buffer.db"), "--status-file", str(status_file)]
            agent = subprocess.Popen(
                [*cli, *run, *files],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _sample(agent, devices, status_file, minutes)
            finally:
                for proc in (agent, devices):
                    proc.send_signal(signal.SIGTERM)
                for proc in (agent, devices):
                    proc.wait(timeout=60)
    finally:
        asyncio.run(bench_topics(bootstrap, topic, delete=True))


def _sample(
    agent: subprocess.Popen[bytes],
    devices: subprocess.Popen[bytes],
    status_file: Path,
    minutes: float,
) -> None:
    print(f"bench-edge-rss: the demo gateway and devices at --speed, for {minutes:g} min")
    print("  min   RSS MB  anon  file  peak   readings/s")
    started = time.monotonic()
    baseline: dict[str, float] | None = None
    last: dict[str, float] = {}
    first_sent: tuple[float, int] | None = None
    rate = "–"  # a rate needs two counts of sent readings, a minute apart
    for minute in range(1, int(minutes) + 1):
        time.sleep(max(0.0, started + 60 * minute - time.monotonic()))
        for name, proc in (("the agent", agent), ("the devices (simulate)", devices)):
            if proc.poll() is not None:  # a soak without its load would measure nothing
                raise SystemExit(f"{name} exited with {proc.returncode}")
        last = process_memory(agent.pid)
        count = sent(status_file)
        if count is not None and first_sent is None:
            first_sent = (time.monotonic(), count)
        elif count is not None and first_sent is not None:
            rate = f"{(count - first_sent[1]) / (time.monotonic() - first_sent[0]):,.0f}"
        baseline = baseline or last
        print(
            f"  {minute:3d}  {last['VmRSS']:7.1f} {last['RssAnon']:5.1f} {last['RssFile']:5.1f}"
            f" {last['VmHWM']:5.1f}   {rate}",
            flush=True,
        )
    if baseline is None:
        raise SystemExit("--minutes must be at least 1")
    print(
        f"  after {minutes:g} min at {rate} readings/s: RSS {last['VmRSS']:.1f} MB "
        f"(anon {last['RssAnon']:.1f} + file-backed {last['RssFile']:.1f}), peak "
        f"{last['VmHWM']:.1f} MB (target <= 100 MB); ratio to the first minute's "
        f"{baseline['VmRSS']:.1f} MB: {last['VmRSS'] / baseline['VmRSS']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30, help="how long (default 30)")
    parser.add_argument(
        "--speed",
        type=float,
        default=10.0,
        help="divide every cadence and period of the demo by this: 1 is the demo's ~50 "
        "readings/s, the default 10 several hundred",
    )
    args = parser.parse_args()
    stack = Stack(StackConfig())
    started = not all(stack.pid(s) for s in ("kafka", "mqtt", "tsdb"))
    stack.up()
    try:
        soak(stack, args.minutes, args.speed)
    finally:
        if started:
            stack.down()


if __name__ == "__main__":
    main()
