"""A worker given a partition whose checkpoint it cannot read back stops, saying why,
instead of processing the partition from an empty state (which would count its readings
again)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from climastream.stack import Stack
from stream.app import StreamSettings, ensure_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


async def _write_manifest_without_parts(settings: StreamSettings) -> None:
    from aiokafka import AIOKafkaProducer

    await ensure_topics(settings)
    manifest = {"offset": 0, "gen": 0, "parts": 2, "bytes": 10, "crc32": 0, "gens": [2, 0]}
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.changelog_topic, orjson.dumps(manifest), key=b"s1:0", partition=0
        )
    finally:
        await producer.stop()


def test_a_checkpoint_with_missing_parts_stops_the_worker(stack: Stack, tmp_path: Path) -> None:
    settings = StreamSettings(
        bootstrap_servers=stack.config.kafka_bootstrap, app_id=f"kpi-broken-{uuid.uuid4().hex[:8]}"
    )
    asyncio.run(_write_manifest_without_parts(settings))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "climastream.cli", "stream", "worker",
             "--kafka", settings.bootstrap_servers, "--app-id", settings.app_id,
             "--data-dir", str(tmp_path / "data"), "--store", "memory"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code != 0, text
    assert "cannot restore a checkpoint, stopping the worker" in text, text
    assert "checkpoint s1:0: part 0 of 2 (generation 0) is missing" in text, text
