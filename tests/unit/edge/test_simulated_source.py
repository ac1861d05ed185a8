"""The simulated source stamps each tick when it was due, not when it was made up."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

from climastream.contract import Quantity
from edge.config import SimulatedSourceConfig
from edge.sources.simulated import SimulatedSource


async def test_ticks_made_up_after_a_stall_keep_their_cadence_apart() -> None:
    """A held event loop (start-up, a stall) made the ticks it missed come back to back,
    stamped a few µs apart: two readings of one device and quantity in the same
    millisecond, which the database stores as one point (the cloud outage test once
    counted 20 readings short for it)."""
    config = SimulatedSourceConfig.model_validate(
        {
            "kind": "simulated",
            "cadence_s": 0.05,
            "devices": [{"device_id": "t1", "quantities": ["temperature"]}],
        }
    )
    source = SimulatedSource(config, clock=lambda: datetime.now(UTC))
    await source.start()
    time.sleep(0.3)  # the loop held for six ticks  # noqa: ASYNC251
    stamps = []
    for _ in range(6):
        [sample] = await source.read()
        assert sample.quantity is Quantity.TEMPERATURE
        stamps.append(sample.event_time)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # a cadence apart, give or take the µs between reading the two clocks
    assert all(abs(gap - timedelta(seconds=0.05)) < timedelta(seconds=0.025) for gap in gaps), gaps
    assert stamps[-1] <= datetime.now(UTC)
