"""A source of simulated devices with plausible city signals (for demos and tests).

Temperature follows a diurnal curve peaking mid-afternoon, plus a per-zone heat-island
offset; PM and NO2 rise at the morning and evening traffic peaks. The signal is a function
of time and a seed, so runs are reproducible.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from climastream.contract import Quantity, SourceState
from climastream.quantities import CANONICAL_UNITS
from edge.config import SimulatedSourceConfig
from edge.sources import Sample

# Heat-island offsets (°C) by zone name keyword; dense centres run warmer (seed 002).
_ZONE_OFFSET = {"centre": 3.0, "center": 3.0, "dense": 4.0, "park": -1.0, "reference": 0.0}


def _diurnal(hour: float, low: float, high: float, peak_hour: float = 15.0) -> float:
    return low + (high - low) * (0.5 + 0.5 * math.cos((hour - peak_hour) / 24.0 * 2 * math.pi))


def _traffic(hour: float) -> float:
    """Relative traffic intensity with peaks near 08:00 and 18:00 (0.2 .. 1.2)."""
    morning = math.exp(-(((hour - 8.0) / 1.5) ** 2))
    evening = math.exp(-(((hour - 18.0) / 2.0) ** 2))
    return 0.2 + morning + 0.8 * evening


def simulated_value(
    quantity: Quantity, zone: str | None, when: datetime, rng: random.Random
) -> float:
    hour = when.hour + when.minute / 60.0 + when.second / 3600.0
    offset = next((v for k, v in _ZONE_OFFSET.items() if zone and k in zone), 1.0)
    traffic = _traffic(hour)
    if quantity is Quantity.TEMPERATURE:
        return round(
            _diurnal(hour, 14.0, 26.0) + offset * (1.2 if hour > 19 else 0.8) + rng.gauss(0, 0.2), 2
        )
    if quantity is Quantity.RELATIVE_HUMIDITY:
        return round(min(100.0, max(5.0, _diurnal(hour, 75.0, 45.0) + rng.gauss(0, 1.5))), 1)
    if quantity is Quantity.PM2_5:
        return round(max(0.0, 6.0 + 14.0 * traffic + rng.gauss(0, 1.5)), 1)
    if quantity is Quantity.PM10:
        return round(max(0.0, 12.0 + 20.0 * traffic + rng.gauss(0, 2.5)), 1)
    if quantity is Quantity.NO2:
        return round(max(0.0, 15.0 + 45.0 * traffic + rng.gauss(0, 3.0)), 1)
    if quantity is Quantity.NOISE_LAEQ:  # street noise follows traffic, quieter at night
        return round(min(95.0, 48.0 + 8.0 * traffic + rng.gauss(0, 1.5)), 1)
    if quantity is Quantity.VEHICLE_COUNT:  # vehicles passing a counter per reading
        return float(max(0, round(3.0 * traffic + rng.gauss(0, 0.8))))
    if quantity is Quantity.PARKING_OCCUPANCY:
        return round(min(100.0, max(0.0, 35.0 + 50.0 * min(traffic, 1.0) + rng.gauss(0, 3))), 1)
    if quantity is Quantity.ENERGY:  # kWh per reading interval of a street of buildings
        return round(max(0.0, 0.02 + 0.03 * traffic + rng.gauss(0, 0.003)), 4)
    if quantity is Quantity.WATER_VOLUME:  # m3 per reading interval
        return round(max(0.0, 0.004 + 0.006 * traffic + rng.gauss(0, 0.001)), 5)
    if quantity is Quantity.BIN_FILL_LEVEL:  # fills during the day, emptied at 06:00
        return round(min(100.0, max(0.0, ((hour - 6.0) % 24.0) * 4.0 + rng.gauss(0, 1))), 1)
    raise ValueError(f"the simulator has no signal model for {quantity.value}")


SIMULATED_QUANTITIES = frozenset(
    {
        Quantity.TEMPERATURE,
        Quantity.RELATIVE_HUMIDITY,
        Quantity.PM2_5,
        Quantity.PM10,
        Quantity.NO2,
        Quantity.NOISE_LAEQ,
        Quantity.VEHICLE_COUNT,
        Quantity.PARKING_OCCUPANCY,
        Quantity.ENERGY,
        Quantity.WATER_VOLUME,
        Quantity.BIN_FILL_LEVEL,
    }
)


class SimulatedSource:
    """Emits one sample per device and quantity every ``cadence_s`` seconds."""

    def __init__(
        self,
        config: SimulatedSourceConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.name = config.name
        self._config = config
        self._clock = clock
        self._rng = random.Random(config.seed)
        self._state = SourceState.DOWN
        self._next_tick: float | None = None
        self._decode_errors: dict[str, int] = {}
        for index, device in enumerate(config.devices):
            unsupported = set(device.quantities) - SIMULATED_QUANTITIES
            if unsupported:
                raise ValueError(
                    f"sources.{config.name}.devices.{index}.quantities: the simulator cannot "
                    f"produce {sorted(q.value for q in unsupported)}"
                )

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def decode_errors(self) -> dict[str, int]:
        return self._decode_errors

    async def start(self) -> None:
        self._state = SourceState.UP
        self._next_tick = asyncio.get_running_loop().time()

    async def read(self) -> list[Sample]:
        if self._next_tick is None:
            raise RuntimeError("read() before start()")
        loop = asyncio.get_running_loop()
        tick = self._next_tick
        delay = tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self._next_tick += self._config.cadence_s
        # Stamped when the tick was due, as a device sampling on its schedule would: ticks
        # made up after the event loop was held (start-up, a stall) came back to back, a
        # few µs apart, and two readings of one series in the same millisecond are one
        # point in the database (sinks/SCHEMA.md).
        late = max(0.0, loop.time() - tick)
        now = self._clock() - timedelta(seconds=late)
        samples = []
        for device in self._config.devices:
            for quantity in device.quantities:
                samples.append(
                    Sample(
                        device_id=device.device_id,
                        quantity=quantity,
                        value=simulated_value(quantity, device.zone, now, self._rng),
                        unit=CANONICAL_UNITS[quantity],
                        event_time=now,
                        zone=device.zone,
                        location=device.location,
                        gateway_time=True,
                    )
                )
        return samples

    async def stop(self) -> None:
        self._state = SourceState.DISABLED
