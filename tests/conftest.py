"""Shared fixtures. Integration tests use the real local stack, started once per session.

The test stack uses its own state directory and ports (override with CLIMASTREAM_TEST_*),
so it never collides with a demo stack running beside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from climastream.stack import Stack, StackConfig

# Property tests: `make test` (and CI) run the same examples every time, so a red build
# always means a change broke something; `make fuzz` explores new random examples.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def _test_stack_config() -> StackConfig:
    root = Path(__file__).resolve().parent.parent
    return StackConfig(
        state_dir=Path(os.environ.get("CLIMASTREAM_TEST_STACK_DIR", root / ".stack-test")),
        kafka_port=int(os.environ.get("CLIMASTREAM_TEST_KAFKA_PORT", "29092")),
        mqtt_port=int(os.environ.get("CLIMASTREAM_TEST_MQTT_PORT", "21883")),
        tsdb_port=int(os.environ.get("CLIMASTREAM_TEST_TSDB_PORT", "28428")),
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The running local stack (Tansu, Mosquitto, VictoriaMetrics) with all topics created."""
    stack = Stack(_test_stack_config())
    already_running = all(stack.pid(s) is not None for s in ("kafka", "mqtt", "tsdb"))
    stack.up()
    try:
        yield stack
    finally:
        if not already_running:
            stack.down()
