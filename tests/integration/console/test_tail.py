"""``climastream tail --zone Z`` as a subprocess against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from climastream.contract import Quantity, Topics, encode
from climastream.stack import Stack
from tests.integration.console.conftest import ROOT
from tests.integration.console.helpers import batch, produce

pytestmark = pytest.mark.integration


async def test_tail_zone_shows_only_that_zones_readings(stack: Stack, tmp_path: Path) -> None:
    kafka = stack.config.kafka_bootstrap
    # one gateway key, so both zones' batches land in one partition in this order: the last
    # zone-a reading comes after every zone-b reading, and --max-lines ends the process there
    zone_a = [(f"tail-a-{i}", "tail-zone-a", 1000 + i, Quantity.NO2, 10.0 + i) for i in range(5)]
    zone_b = [(f"tail-b-{i}", "tail-zone-b", 2000 + i, Quantity.NO2, 50.0 + i) for i in range(5)]
    batches = [
        batch("gw-tail", zone_a[:2]),
        batch("gw-tail", zone_b[:3]),
        batch("gw-tail", zone_a[2:4] + zone_b[3:]),
        batch("gw-tail", zone_a[4:]),
    ]
    stderr_path = tmp_path / "tail.err"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop matters
            [
                sys.executable,
                "-m",
                "climastream.cli",
                "tail",
                "--kafka",
                kafka,
                "--zone",
                "tail-zone-a",
                "--max-lines",
                str(len(zone_a)),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        for _ in range(300):  # wait until it is positioned at the end of the topic
            if "tail: following" in stderr_path.read_text():
                break
            assert proc.poll() is None, stderr_path.read_text()
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"tail never became ready: {stderr_path.read_text()}")
        await produce(kafka, Topics.READINGS.name, [(b.key, encode(b)) for b in batches])
        stdout, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaps it and closes its stdout pipe (else a ResourceWarning)
    lines = [line for line in stdout.decode().splitlines() if line.strip()]
    assert proc.returncode == 0, stderr_path.read_text()
    assert len(lines) == len(zone_a), lines
    for (device, zone, _seq, quantity, value), line in zip(zone_a, lines, strict=True):
        assert device in line
        assert zone in line
        assert quantity.value in line
        assert f"{value:.3f}" in line
    assert "tail-zone-b" not in stdout.decode()
    assert "tail-b-" not in stdout.decode()
