"""The whole KPI computation offline: stage 1 -> re-key by zone -> stage 2, in one process.

``climastream kpi eval`` runs this on a JSONL file; the Faust app runs the very same two
stages on partitions. Readings are fed in batches per gateway, as the stream gets them.

Stage 1 works per gateway (windows, watermark, deduplication), so its result does not
depend on how the gateways' readings interleave in the input. The zone stage closes a zone
window only when every gateway of the input has passed it, as the live zone stage waits
for every partition: given the input's gateways (``gateways``; ``kpi eval`` reads the file
once for them), windows close as the replay goes; without them, at :meth:`Replay.finish`.
Either way an export grouped by gateway gives the same KPIs as one in time order.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from climastream.contract import KpiValue, Reading
from stream.config import StreamConfig
from stream.windows import DevicePartial, DeviceWindows
from stream.zones import ZoneWindows, routing_keys

SOURCE = "replay"


@dataclass
class ReplayResult:
    kpis: list[KpiValue] = field(default_factory=list)
    late: list[Reading] = field(default_factory=list)
    duplicates: int = 0
    #: device windows (and their readings) dropped because their zone window had closed
    stale_partials: int = 0
    stale_readings: int = 0


class Replay:
    """Feed readings, collect KPIs; :meth:`finish` closes whatever is still open.

    ``gateways``: every gateway of the input, when known up front (zone windows then
    close as the replay goes); None: zone windows close at :meth:`finish`.
    """

    def __init__(
        self,
        config: StreamConfig,
        only_kpi: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        gateways: Collection[str] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.devices = DeviceWindows(
            config.window,
            config.grace,
            gateways=gateways,
            withhold=gateways is None,
            zones=config.device_zones,
            tz=config.tz,
        )
        self.zones = ZoneWindows(config, sources=1, only_kpi=only_kpi)
        self.result = ReplayResult()

    def _route(self, partials: list[DevicePartial]) -> None:
        for partial in partials:
            for key, reference in routing_keys(partial, self.config):
                self.zones.add(key, partial, reference, SOURCE)

    def add(self, readings: Iterable[Reading]) -> None:
        self.result.late.extend(self.devices.add(readings))
        self._route(self.devices.close())
        horizon = self.devices.horizon()
        if horizon is not None:
            self.zones.advance(SOURCE, horizon)
            self.result.kpis.extend(self.zones.close())

    def finish(self) -> ReplayResult:
        self._route(self.devices.flush())
        horizon = self.devices.horizon()
        if horizon is not None:
            self.zones.advance(SOURCE, horizon)
        self.result.kpis.extend(self.zones.close(final=True, now=self.clock()))
        stats = self.zones.stats
        # redelivered through the same gateway (stage 1), or heard through two (stage 2)
        self.result.duplicates = self.devices.stats.duplicates + stats.duplicates
        self.result.stale_partials = stats.stale_partials
        self.result.stale_readings = stats.stale_readings
        return self.result


def replay(
    readings: Iterable[Reading],
    config: StreamConfig,
    only_kpi: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReplayResult:
    readings = list(readings)
    run = Replay(config, only_kpi, clock, gateways={r.gateway_id for r in readings})
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
