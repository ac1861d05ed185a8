"""The local stack: real services answer, topics exist, and `down` spares strangers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from climastream.contract import TOPICS
from climastream.stack import Stack, StackConfig, tansu_binary

pytestmark = pytest.mark.integration


def test_services_answer_and_topics_have_their_partitions(stack: Stack) -> None:
    assert stack.kafka_ready()
    assert stack.mqtt_ready()
    assert stack.tsdb_ready()
    out = subprocess.run(
        [str(tansu_binary()), "topic", "list", "--broker", f"tcp://{stack.config.kafka_bootstrap}"],
        capture_output=True,
        text=True,
        check=True,
    )
    partitions = {t["name"]: len(t["partitions"]) for t in json.loads(out.stdout)}
    for spec in TOPICS:
        assert partitions[spec.name] == spec.partitions, spec.name


def test_up_is_idempotent_and_status_reports_up(stack: Stack) -> None:
    pids = {s: stack.pid(s) for s in ("kafka", "mqtt", "tsdb")}
    stack.up()
    assert {s: stack.pid(s) for s in pids} == pids
    assert all(state.startswith("up") for state in stack.status().values())


def test_down_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Stack(StackConfig(state_dir=tmp_path / "s", kafka_port=1, mqtt_port=1, tsdb_port=1))
        other.dir.mkdir(parents=True)
        # a pid file pointing at a stranger (e.g. a recycled pid) must be ignored
        (other.dir / "kafka.pid").write_text(f"{stranger.pid}\n")
        assert other.pid("kafka") is None
        assert other.down() == []
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_paused_broker_keeps_its_topics(stack: Stack) -> None:
    stack.pause("kafka")
    try:
        assert not stack.kafka_ready()
    finally:
        stack.resume("kafka")
    deadline = time.monotonic() + 20
    while not stack.kafka_ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.kafka_ready()
    stack.create_topics()  # nothing to create: the topics survived
