"""Realistic signals for simulated sensors, and faults injected on demand.

- :class:`DiurnalTemperature`: a daily cycle peaking mid-afternoon, plus an urban heat
  island offset that is largest at 23:00 (Brussels measured dense areas up to 9 °C
  warmer than the reference station at that hour) and smallest at 11:00.
- :class:`TrafficPm`: PM2.5 background plus morning and evening rush-hour peaks on
  weekdays; PM10 follows as a coarse-fraction multiple.
- :class:`Faults`: stuck value, spike, dropout and garbage bytes, each switched on by a
  :class:`FaultPlan` for a time window or with a probability. A spike multiplies every
  value by ``spike_factor`` and saturates it at the device's full scale (the range its
  wire format can carry, which each device passes as ``limits``), as a real sensor pegs at
  its maximum: the frame stays valid and the outlier is for the pipeline to catch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


class FakeClock:
    """A clock that moves only when told to; callable like ``datetime.now(UTC)``."""

    def __init__(self, start: datetime = datetime(2024, 7, 1, tzinfo=UTC)) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = start.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def _hour(when: datetime, utc_offset_hours: float) -> float:
    local = when + timedelta(hours=utc_offset_hours)
    return local.hour + local.minute / 60 + local.second / 3600


@dataclass(frozen=True, slots=True)
class DiurnalTemperature:
    """Air temperature in °C at a time, for a zone with a heat-island offset.

    ``heat_island`` is the zone's UHI intensity at its 23:00 maximum; at 11:00 it falls to
    ``day_fraction`` of that. ``noise`` is the standard deviation of sensor noise.
    """

    mean: float = 20.0
    amplitude: float = 6.0
    peak_hour: float = 15.0
    heat_island: float = 0.0
    day_fraction: float = 0.3
    noise: float = 0.1
    utc_offset_hours: float = 2.0

    def value(self, when: datetime, rng: random.Random) -> float:
        hour = _hour(when, self.utc_offset_hours)
        base = self.mean + self.amplitude * math.cos(2 * math.pi * (hour - self.peak_hour) / 24)
        night = (1 + math.cos(2 * math.pi * (hour - 23) / 24)) / 2  # 1 at 23:00, 0 at 11:00
        uhi = self.heat_island * (self.day_fraction + (1 - self.day_fraction) * night)
        return base + uhi + rng.gauss(0.0, self.noise)


@dataclass(frozen=True, slots=True)
class TrafficPm:
    """PM2.5 and PM10 in µg/m³ with weekday rush-hour peaks (08:00 and 18:00 local)."""

    background: float = 8.0
    peak: float = 20.0
    peak_hours: tuple[float, ...] = (8.0, 18.0)
    peak_width_hours: float = 1.2
    weekend_factor: float = 0.4
    coarse_ratio: float = 1.6
    noise: float = 0.8
    utc_offset_hours: float = 2.0

    def value(self, when: datetime, rng: random.Random) -> tuple[float, float]:
        hour = _hour(when, self.utc_offset_hours)
        factor = (
            self.weekend_factor
            if (when + timedelta(hours=self.utc_offset_hours)).weekday() >= 5
            else 1.0
        )
        rush = sum(
            math.exp(-(((hour - h) / self.peak_width_hours) ** 2) / 2) for h in self.peak_hours
        )
        pm25 = max(0.0, self.background + factor * self.peak * rush + rng.gauss(0.0, self.noise))
        pm10 = max(pm25, pm25 * self.coarse_ratio + rng.gauss(0.0, self.noise))
        return pm25, pm10


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """When a fault is active: inside ``[start, end)`` and then with ``probability``."""

    start: datetime | None = None
    end: datetime | None = None
    probability: float = 1.0

    def active(self, when: datetime, rng: random.Random) -> bool:
        if self.start is not None and when < self.start:
            return False
        if self.end is not None and when >= self.end:
            return False
        return rng.random() < self.probability


@dataclass(slots=True)
class Faults:
    """Faults a simulated device shows on demand; mutate the fields to switch them."""

    stuck: FaultPlan | None = None
    spike: FaultPlan | None = None
    spike_factor: float = 10.0
    dropout: FaultPlan | None = None
    garbage: FaultPlan | None = None
    garbage_bytes: int = 7

    def apply(
        self,
        values: tuple[float, ...],
        last: tuple[float, ...] | None,
        when: datetime,
        rng: random.Random,
        limits: Sequence[tuple[float, float]] | None = None,
    ) -> tuple[float, ...] | None:
        """The values the device reports: None for a dropout, the last ones when stuck.

        ``limits`` is the ``(low, high)`` full scale of each value: a spiked value is
        clamped to it, so it still fits the device's frame.
        """
        if self.dropout is not None and self.dropout.active(when, rng):
            return None
        if self.stuck is not None and last is not None and self.stuck.active(when, rng):
            return last
        if self.spike is not None and self.spike.active(when, rng):
            spiked = tuple(v * self.spike_factor for v in values)
            if limits is not None:
                spiked = tuple(
                    min(high, max(low, v)) for v, (low, high) in zip(spiked, limits, strict=True)
                )
            return spiked
        return values

    def noise_bytes(self, when: datetime, rng: random.Random) -> bytes:
        """Line noise to write before the next frame (empty when no garbage fault is on)."""
        if self.garbage is None or not self.garbage.active(when, rng):
            return b""
        return bytes(rng.randrange(256) for _ in range(self.garbage_bytes))
