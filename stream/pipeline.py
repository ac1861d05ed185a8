"""The whole KPI computation offline: stage 1 -> re-key by zone -> stage 2, in one process.

``climastream kpi eval`` runs this on a JSONL file; the Faust app runs the very same two
stages on partitions. Readings are fed in batches per gateway, as the stream gets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from climastream.contract import KpiValue, Reading
from stream.config import StreamConfig
from stream.windows import DevicePartial, DeviceWindows
from stream.zones import ZoneWindows, routing_keys


@dataclass
class ReplayResult:
    kpis: list[KpiValue] = field(default_factory=list)
    late: list[Reading] = field(default_factory=list)
    duplicates: int = 0


class Replay:
    """Feed readings, collect KPIs; :meth:`finish` closes whatever is still open."""

    def __init__(
        self,
        config: StreamConfig,
        only_kpi: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.clock = clock
        self.devices = DeviceWindows(config.window, config.grace)
        self.zones = ZoneWindows(config, sources=1, only_kpi=only_kpi)
        self.result = ReplayResult()

    def _route(self, partials: list[DevicePartial]) -> None:
        for partial in partials:
            for key, reference in routing_keys(partial, self.config):
                self.zones.add(key, partial, reference)

    def add(self, readings: Iterable[Reading]) -> None:
        self.result.late.extend(self.devices.add(readings))
        self._route(self.devices.close())
        horizon = self.devices.horizon()
        if horizon is not None:
            self.zones.advance("replay", horizon)
            self.result.kpis.extend(self.zones.close())

    def finish(self) -> ReplayResult:
        self._route(self.devices.flush())
        horizon = self.devices.horizon()
        if horizon is not None:
            self.zones.advance("replay", horizon)
        self.result.kpis.extend(self.zones.close(final=True, now=self.clock()))
        # redelivered through the same gateway (stage 1), or heard through two (stage 2)
        self.result.duplicates = self.devices.stats.duplicates + self.zones.stats.duplicates
        return self.result


def replay(
    readings: Iterable[Reading],
    config: StreamConfig,
    only_kpi: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReplayResult:
    run = Replay(config, only_kpi, clock)
    for batch in _batched(readings, 500):
        run.add(batch)
    return run.finish()


def _batched(readings: Iterable[Reading], size: int) -> Iterator[list[Reading]]:
    batch: list[Reading] = []
    for reading in readings:
        batch.append(reading)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
