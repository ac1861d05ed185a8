"""Shared fixtures. Integration tests use the real local stack, started once per session.

The test stack uses its own state directory and ports (override with CLIMASTREAM_TEST_*),
so it never collides with a demo stack running beside it.
"""

from __future__ import annotations

import os
import sys
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


def pytest_unconfigure(config: pytest.Config) -> None:
    """After pytest's own summary, one line naming what failed and why.

    CI keeps only the last lines a run prints: pytest's count line alone would not say
    which test failed. This line comes after it (then make's error line).
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    stats = reporter.stats
    bad = [r for key in ("failed", "error") for r in stats.get(key, [])]
    if not bad:
        return
    counts = ", ".join(
        f"{len(stats[key])} {key}"
        for key in ("failed", "error", "passed", "skipped")
        if stats.get(key)
    )
    names = []
    for report in bad[:5]:
        crash = getattr(report.longrepr, "reprcrash", None)
        why = " ".join(str(crash.message).split())[:160] if crash is not None else ""
        names.append(f"{report.nodeid} ({report.when}): {why}" if why else report.nodeid)
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    print(f"tests: {counts}; " + "; ".join(names) + more, file=sys.stdout, flush=True)
