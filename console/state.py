"""The console's live picture of the city: bounded, pure, and cheap to snapshot.

:class:`LiveState` folds readings, KPIs, alerts and gateway status into fixed-size
structures and renders one JSON-able snapshot per *panel* (map, streams, kpi, alerts,
gateways, stats). Every structure has a hard bound, so a console that runs for weeks holds
the same memory as one that runs for minutes:

- sparklines are time-bucketed ring buffers (``spark_points`` buckets per series);
- series, devices, KPIs and alerts live in LRU maps with a maximum size;
- resolved alerts are kept only in a short ring.

Nothing here does I/O or reads the wall clock itself: the clock is injected, so unit tests
drive it by hand. Adding data only marks panels dirty; the hub decides when to render.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from climastream.contract import (
    RUN_START_TOLERANCE,
    Alert,
    AlertState,
    GatewayStatus,
    KpiValue,
    NewestStatus,
    Quantity,
    Reading,
)
from stream.formulas import BANDS, DEFAULT_EAQI_TABLE, EAQI_TABLES

PANELS: tuple[str, ...] = ("map", "streams", "kpi", "alerts", "gateways", "stats")

#: The stream's default EAQI table (one source of truth: a provisional tile must agree with
#: the KPI that later replaces it). stream.formulas is pure and imports no Faust.
EAQI_TABLE = EAQI_TABLES[DEFAULT_EAQI_TABLE]
EAQI_BREAKPOINTS = EAQI_TABLE.bounds
EAQI_BANDS: tuple[str, ...] = BANDS

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """An LRU map that forgets its least recently written entry beyond ``max_size``."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._items: OrderedDict[K, V] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)
            self.evicted += 1

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def items(self) -> Iterable[tuple[K, V]]:
        return list(self._items.items())

    def values(self) -> Iterable[V]:
        return list(self._items.values())


class Sparkline:
    """Mean per time bucket over the last ``points`` buckets (a ring buffer).

    A reading older than the oldest kept bucket is ignored here (the sink stores it; this
    is only a picture of the last minutes).
    """

    __slots__ = ("_buckets", "bucket_s", "latest", "latest_time")

    def __init__(self, bucket_s: float, points: int) -> None:
        self.bucket_s = bucket_s
        # each bucket: [index, sum, count]
        self._buckets: deque[list[float]] = deque(maxlen=points)
        self.latest: float | None = None
        self.latest_time: float = -math.inf

    def __len__(self) -> int:
        return len(self._buckets)

    def add(self, ts: float, value: float) -> None:
        if ts >= self.latest_time:
            self.latest, self.latest_time = value, ts
        index = math.floor(ts / self.bucket_s)
        buckets = self._buckets
        if not buckets or index > buckets[-1][0]:
            buckets.append([index, value, 1])
            return
        for bucket in reversed(buckets):
            if bucket[0] == index:
                bucket[1] += value
                bucket[2] += 1
                return
            if bucket[0] < index:
                break
        # out of order inside the window but its bucket is missing: too rare to keep

    def points(self) -> list[list[float]]:
        """``[[bucket_start_epoch_s, mean], ...]`` oldest first, rounded for the wire."""
        return [[round(b[0] * self.bucket_s, 3), round(b[1] / b[2], 3)] for b in self._buckets]


@dataclass
class DeviceInfo:
    device_id: str
    gateway_id: str | None = None
    zone: str | None = None
    lat: float | None = None
    lon: float | None = None
    configured: bool = False
    last_seen: datetime | None = None
    latest: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: the event time of each ``latest`` value (NGSI-LD's ``observedAt``)
    observed: dict[str, datetime] = field(default_factory=dict)


@dataclass
class GatewayView:
    """A gateway's newest status (by :attr:`GatewayStatus.order`, not by its time), and
    when the console got it and the runs it replaced (``newest``)."""

    status: GatewayStatus
    newest: NewestStatus
    #: the shown run's clock is behind though the gateway does not say (older than
    #: ``clock_synchronized``): it started after the last run's newest status was
    #: written, yet its time is earlier than that status's plus its uptime
    clock_behind: bool = False

    @property
    def clock_wrong(self) -> bool:
        return self.status.clock_synchronized is False or (
            self.status.clock_synchronized is None and self.clock_behind
        )


def eaqi_band_index(quantity: Quantity, value: float) -> int | None:
    """EAQI band 1..6 of one pollutant concentration, or None if it is not an EAQI input."""
    if quantity not in EAQI_BREAKPOINTS:
        return None
    return EAQI_TABLE.band_index(quantity, value)


def _band_by(thresholds: tuple[float, ...], value: float, names: tuple[str, ...]) -> str:
    for name, upper in zip(names, thresholds, strict=False):
        if value < upper:
            return name
    return names[len(thresholds)] if len(thresholds) < len(names) else names[-1]


# Display bands for tiles whose KPI carries no band (the colour scale a tile uses).
def uhi_band(celsius: float) -> str:
    return _band_by((1, 2, 4, 6, 9), celsius, EAQI_BANDS)


def heat_index_band(celsius: float) -> str:
    # NOAA heat index categories: caution 27, extreme caution 32, danger 41, extreme danger 54
    return _band_by(
        (27, 32, 41, 54), celsius, ("good", "moderate", "poor", "very_poor", "extremely_poor")
    )


def noise_band(dba: float) -> str:
    # WHO environmental noise guidelines (2018): 53 dB Lden road traffic; 65/70 dB severe
    return _band_by((53, 60, 65, 70), dba, ("good", "fair", "moderate", "poor", "very_poor"))


def completeness_band(ratio: float) -> str:
    return _band_by((0.5, 0.8, 0.95), ratio, ("very_poor", "poor", "moderate", "good"))


@dataclass(frozen=True)
class StateLimits:
    spark_window: timedelta = timedelta(minutes=5)
    spark_points: int = 60
    max_devices: int = 5000
    max_series: int = 20000
    max_kpis: int = 20000
    max_active_alerts: int = 500
    resolved_kept: int = 20
    resolved_remembered: int = 5000
    max_stream_rows: int = 300
    stale_after: timedelta = timedelta(seconds=60)


#: the longest device-id search the streams panel takes
MAX_DEVICE_SEARCH = 100


@dataclass(frozen=True)
class StreamsView:
    """Which series the streams panel shows: those of one ``zone``, and/or the devices whose
    id contains ``device`` (case-insensitive); the default shows every series.

    The panel holds at most ``max_stream_rows`` rows, in id order. Without a view, a city
    with more series than that would only ever show the devices whose ids sort first: the
    view is how an operator reaches the others.
    """

    zone: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.device is not None and len(self.device) > MAX_DEVICE_SEARCH:
            raise ValueError(
                f"device search is {len(self.device)} characters; at most {MAX_DEVICE_SEARCH}"
            )

    def shows_zone_row(self, zone: str) -> bool:
        # a device search shows devices; a zone mean matches no device id
        return not self.device and self.zone in (None, zone)

    def shows_device_row(self, device_id: str, zone: str | None) -> bool:
        if self.zone is not None and zone != self.zone:
            return False
        return not self.device or self.device.casefold() in device_id.casefold()


ALL_STREAMS = StreamsView()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


class LiveState:
    """What every sensor, zone, alert and gateway says right now, within fixed bounds."""

    def __init__(
        self,
        devices: Iterable[DeviceInfo] = (),
        *,
        limits: StateLimits | None = None,
        clock: Callable[[], datetime] = _utc_now,
        reference_zone: str | None = None,
    ) -> None:
        self.limits = limits or StateLimits()
        self.clock = clock
        self.reference_zone = reference_zone
        self._bucket_s = self.limits.spark_window.total_seconds() / self.limits.spark_points
        self.devices: BoundedMap[str, DeviceInfo] = BoundedMap(self.limits.max_devices)
        self.configured_zones: set[str] = set()
        for device in devices:
            device.configured = True
            self.devices.put(device.device_id, device)
            if device.zone:
                self.configured_zones.add(device.zone)
        self.device_series: BoundedMap[tuple[str, str], Sparkline] = BoundedMap(
            self.limits.max_series
        )
        self.zone_series: BoundedMap[tuple[str, str], Sparkline] = BoundedMap(
            self.limits.max_series
        )
        self.units: dict[str, str] = {}
        self.kpis: BoundedMap[tuple[str, str, str, str], KpiValue] = BoundedMap(
            self.limits.max_kpis
        )
        #: the newest zone-scoped value per (KPI id, zone), whatever quantity the KPI is of
        #: (uhi.intensity is "of temperature", noise.laeq "of noise_laeq" ...): the tiles'
        #: lookup
        self.zone_kpis: BoundedMap[tuple[str, str], KpiValue] = BoundedMap(self.limits.max_kpis)
        self.alerts: BoundedMap[str, Alert] = BoundedMap(self.limits.max_active_alerts)
        self.resolved: deque[Alert] = deque(maxlen=self.limits.resolved_kept)
        #: when each recently resolved alert was resolved: a late, older record of it must
        #: not bring it back once it has left ``alerts``
        self._resolved_at: BoundedMap[str, datetime] = BoundedMap(self.limits.resolved_remembered)
        self.gateways: BoundedMap[str, GatewayView] = BoundedMap(1000)
        self.counts: dict[str, int] = {"readings": 0, "kpis": 0, "alerts": 0, "gateway_status": 0}
        self.rejected: dict[str, int] = {}
        self._rate: deque[tuple[int, int]] = deque(maxlen=16)
        #: whether the Kafka feed is reading, and why not: an empty page must say so
        self.feed_connected = False
        self.feed_error: str | None = None
        self._dirty: set[str] = set(PANELS)

    # ------------------------------------------------------------------ input

    def take_dirty(self) -> set[str]:
        """The panels changed since the last call (and forget them)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def mark(self, *panels: str) -> None:
        self._dirty.update(panels)

    def feed_up(self) -> None:
        """The Kafka feed is connected and reading its topics."""
        self.feed_connected, self.feed_error = True, None
        self._dirty.add("stats")

    def feed_down(self, error: str) -> None:
        """The Kafka feed failed (``error`` says how) and is retrying."""
        self.feed_connected, self.feed_error = False, error[:300]
        self._dirty.add("stats")

    def reject(self, topic: str) -> None:
        """Count a record that failed the contract, or some of whose readings did (the
        stream and the sink dead-letter those)."""
        self.rejected[topic] = self.rejected.get(topic, 0) + 1
        self._dirty.add("stats")

    def add_readings(self, readings: Iterable[Reading]) -> None:
        n = 0
        for reading in readings:
            n += 1
            device = self.devices.get(reading.device_id)
            if device is None:
                device = DeviceInfo(reading.device_id)
                self.devices.put(reading.device_id, device)
            device.gateway_id = reading.gateway_id
            if reading.zone:
                device.zone = reading.zone
            if reading.location is not None and not device.configured:
                device.lat, device.lon = reading.location.lat, reading.location.lon
            if device.last_seen is None or reading.event_time > device.last_seen:
                device.last_seen = reading.event_time
            quantity = reading.quantity.value
            ts = reading.event_time.timestamp()
            self.units[quantity] = reading.unit
            series = self.device_series.get((reading.device_id, quantity))
            if series is None:
                series = Sparkline(self._bucket_s, self.limits.spark_points)
                self.device_series.put((reading.device_id, quantity), series)
            series.add(ts, reading.value)
            if series.latest_time == ts:
                device.latest[quantity] = (reading.value, reading.unit)
                device.observed[quantity] = reading.event_time
            zone = device.zone
            if zone:
                zone_series = self.zone_series.get((zone, quantity))
                if zone_series is None:
                    zone_series = Sparkline(self._bucket_s, self.limits.spark_points)
                    self.zone_series.put((zone, quantity), zone_series)
                zone_series.add(ts, reading.value)
        if n:
            self.counts["readings"] += n
            second = math.floor(self.clock().timestamp())
            if self._rate and self._rate[-1][0] == second:
                self._rate[-1] = (second, self._rate[-1][1] + n)
            else:
                self._rate.append((second, n))
            self._dirty.update(("map", "streams", "kpi", "stats"))

    def add_kpi(self, kpi: KpiValue) -> None:
        key = (
            kpi.kpi_id,
            kpi.zone or "",
            kpi.device_id or "",
            kpi.quantity.value if kpi.quantity else "",
        )
        previous = self.kpis.get(key)
        if previous is None or kpi.window_end >= previous.window_end:
            self.kpis.put(key, kpi)
        if kpi.zone and not kpi.device_id:
            latest = self.zone_kpis.get((kpi.kpi_id, kpi.zone))
            if latest is None or kpi.window_end >= latest.window_end:
                self.zone_kpis.put((kpi.kpi_id, kpi.zone), kpi)
        self.counts["kpis"] += 1
        self._dirty.update(("kpi", "map", "stats"))

    def add_alert(self, alert: Alert) -> None:
        self.counts["alerts"] += 1
        self._dirty.update(("alerts", "stats"))
        previous = self.alerts.get(alert.fingerprint)
        newest = previous.updated_at if previous else self._resolved_at.get(alert.fingerprint)
        if newest is not None and alert.updated_at < newest:
            return  # an older state change arriving late never undoes a newer one
        if alert.state is AlertState.RESOLVED:
            self.alerts.pop(alert.fingerprint)
            self.resolved.append(alert)
            self._resolved_at.put(alert.fingerprint, alert.updated_at)
        else:
            self.alerts.put(alert.fingerprint, alert)

    def add_gateway_status(self, status: GatewayStatus) -> None:
        """Show ``status`` if it is the gateway's newest (:class:`StatusOrder`): after a
        power cut a gateway's clock is hours behind, and statuses it buffered arrive late."""
        now = self.clock()
        view = self.gateways.get(status.gateway_id)
        if view is None:
            self.gateways.put(
                status.gateway_id, GatewayView(status, NewestStatus(status.order, now))
            )
        else:
            order, shown = status.order, view.newest.order
            if view.newest.offer(order, now, self.limits.stale_after):
                if not order.same_run(shown):
                    since = timedelta(seconds=status.uptime_s) - RUN_START_TOLERANCE
                    view.clock_behind = (
                        status.uptime_s < shown.uptime_s and status.time < view.status.time + since
                    )
                view.status = status
                self.gateways.put(status.gateway_id, view)
        self.counts["gateway_status"] += 1
        self._dirty.update(("gateways", "stats"))

    # ------------------------------------------------------------------ derived values

    def _kpi(self, kpi_id: str, zone: str) -> KpiValue | None:
        """The zone's newest value of ``kpi_id`` (zone scope, any quantity)."""
        return self.zone_kpis.get((kpi_id, zone))

    def _zones(self) -> list[str]:
        zones = set(self.configured_zones)
        zones.update(d.zone for d in self.devices.values() if d.zone)
        zones.update(k[1] for k, _ in self.kpis.items() if k[1])
        return sorted(zones)

    def _zone_latest_mean(self, zone: str, quantity: str) -> float | None:
        values = [
            d.latest[quantity][0]
            for d in self.devices.values()
            if d.zone == zone and quantity in d.latest and not self._stale(d)
        ]
        return sum(values) / len(values) if values else None

    def _stale(self, device: DeviceInfo) -> bool:
        return device.last_seen is None or (
            self.clock() - device.last_seen > self.limits.stale_after
        )

    def zone_eaqi(self, zone: str) -> dict[str, Any] | None:
        """The zone's EAQI from the stream's ``eaqi`` KPI, else provisional from readings.

        The provisional index is the worst band over the pollutants' current zone means,
        using the EEA breakpoints; it is marked ``provisional`` so nobody mistakes it for
        the hourly index.
        """
        kpi = self._kpi("eaqi", zone)
        if kpi is not None:
            index = max(1, min(6, round(kpi.value)))
            return {
                "value": kpi.value,
                "band": kpi.band or EAQI_BANDS[index - 1],
                "dominant": kpi.attributes.get("dominant_pollutant"),
                "source": "kpi",
                "window_end": _iso(kpi.window_end),
            }
        worst: tuple[int, str] | None = None
        for quantity in EAQI_BREAKPOINTS:
            mean = self._zone_latest_mean(zone, quantity.value)
            if mean is None:
                continue
            band = eaqi_band_index(quantity, mean)
            if band is not None and (worst is None or band > worst[0]):
                worst = (band, quantity.value)
        if worst is None:
            return None
        return {
            "value": worst[0],
            "band": EAQI_BANDS[worst[0] - 1],
            "dominant": worst[1],
            "source": "readings",
        }

    def zone_uhi(self, zone: str) -> dict[str, Any] | None:
        """UHI intensity (°C) from ``uhi.intensity``, else provisional from temperatures.

        Provisional: the zone's mean temperature minus the reference zone's (the configured
        one, or the coolest zone), as the Brussels UHI plan compares with the RMI station.
        """
        kpi = self._kpi("uhi.intensity", zone)
        if kpi is not None:
            return {
                "value": kpi.value,
                "unit": kpi.unit,
                "band": kpi.band or uhi_band(kpi.value),
                "source": "kpi",
            }
        means = {
            z: m
            for z in self._zones()
            if (m := self._zone_latest_mean(z, Quantity.TEMPERATURE.value)) is not None
        }
        if zone not in means or len(means) < 2:
            return None
        reference = (
            self.reference_zone
            if self.reference_zone in means
            else min(means, key=lambda z: means[z])
        )
        intensity = round(means[zone] - means[reference], 2)
        return {
            "value": intensity,
            "unit": "Cel",
            "band": uhi_band(intensity),
            "source": "readings",
            "reference": reference,
        }

    def _tile(self, kpi_id: str, zone: str, band: Callable[[float], str]) -> dict[str, Any] | None:
        kpi = self._kpi(kpi_id, zone)
        if kpi is None:
            return None
        return {
            "value": kpi.value,
            "unit": kpi.unit,
            "band": kpi.band or band(kpi.value),
            "completeness": kpi.completeness,
            "window_end": _iso(kpi.window_end),
        }

    def zone_completeness(self, zone: str) -> dict[str, Any] | None:
        """The ``completeness`` KPI of the zone, else the mean completeness carried by the
        latest KPIs of the zone and of its devices (every KpiValue carries one)."""
        kpi = self._kpi("completeness", zone)
        if kpi is not None:
            return {"value": kpi.value, "unit": "1", "band": completeness_band(kpi.value)}
        values: list[float] = []
        for (_kpi_id, kpi_zone, device_id, _q), value in self.kpis.items():
            if kpi_zone == zone:
                values.append(value.completeness)
            elif device_id:
                device = self.devices.get(device_id)
                if device is not None and device.zone == zone:
                    values.append(value.completeness)
        if not values:
            return None
        mean = round(sum(values) / len(values), 4)
        return {"value": mean, "unit": "1", "band": completeness_band(mean), "kpis": len(values)}

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, panel: str, view: StreamsView = ALL_STREAMS) -> dict[str, Any]:
        """One panel's JSON; ``view`` chooses the rows of ``streams`` (other panels have
        no view)."""
        if panel == "streams":
            return self._streams(view)
        render = {
            "map": self._map,
            "kpi": self._kpi_panel,
            "alerts": self._alerts,
            "gateways": self._gateways,
            "stats": self._stats,
        }[panel]
        return render()

    def _map(self) -> dict[str, Any]:
        zones = {
            zone: {"eaqi": self.zone_eaqi(zone), "uhi": self.zone_uhi(zone)}
            for zone in self._zones()
        }
        devices = []
        for device in self.devices.values():
            if device.lat is None or device.lon is None:
                continue
            devices.append(
                {
                    "id": device.device_id,
                    "zone": device.zone,
                    "gateway": device.gateway_id,
                    "lat": device.lat,
                    "lon": device.lon,
                    "stale": self._stale(device),
                    "last_seen": _iso(device.last_seen),
                    "values": {q: round(v, 3) for q, (v, _u) in sorted(device.latest.items())},
                }
            )
        return {"zones": zones, "devices": devices}

    def _streams(self, view: StreamsView) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        zones: set[str] = set()
        for (zone, quantity), series in sorted(self.zone_series.items(), key=lambda kv: kv[0]):
            zones.add(zone)
            if not view.shows_zone_row(zone):
                continue
            rows.append(
                {
                    "scope": "zone",
                    "id": zone,
                    "zone": zone,
                    "quantity": quantity,
                    "unit": self.units.get(quantity, ""),
                    "latest": series.latest,
                    "points": series.points(),
                }
            )
        for (device_id, quantity), series in sorted(
            self.device_series.items(), key=lambda kv: kv[0]
        ):
            device = self.devices.get(device_id)
            device_zone = device.zone if device else None
            if device_zone:
                zones.add(device_zone)
            if not view.shows_device_row(device_id, device_zone):
                continue
            rows.append(
                {
                    "scope": "device",
                    "id": device_id,
                    "zone": device_zone,
                    "quantity": quantity,
                    "unit": self.units.get(quantity, ""),
                    "latest": series.latest,
                    "points": series.points(),
                }
            )
        limit = self.limits.max_stream_rows
        return {
            "bucket_s": self._bucket_s,
            "rows": rows[:limit],
            "omitted": max(0, len(rows) - limit),
            "zones": sorted(zones),
            "view": {"zone": view.zone, "device": view.device},
        }

    def _kpi_panel(self) -> dict[str, Any]:
        tiles = {}
        for zone in self._zones():
            tiles[zone] = {
                "eaqi": self.zone_eaqi(zone),
                "uhi": self.zone_uhi(zone),
                "heat_index": self._tile("heat.heat_index", zone, heat_index_band),
                "noise": self._tile("noise.laeq", zone, noise_band),
                "traffic": self._tile("traffic.vehicles", zone, lambda _v: "neutral"),
                "completeness": self.zone_completeness(zone),
            }
        return {"zones": tiles}

    @staticmethod
    def _alert_view(alert: Alert) -> dict[str, Any]:
        return {
            "fingerprint": alert.fingerprint,
            "rule_id": alert.rule_id,
            "state": alert.state.value,
            "severity": alert.severity.value,
            "summary": alert.summary,
            "description": alert.description[:1000],
            "zone": alert.zone,
            "device_id": alert.device_id,
            "gateway_id": alert.gateway_id,
            "kpi_id": alert.kpi_id,
            "value": alert.value,
            "threshold": alert.threshold,
            "unit": alert.unit,
            "completeness": alert.completeness,
            "score": alert.score,
            "started_at": _iso(alert.started_at),
            "updated_at": _iso(alert.updated_at),
            "evidence": [
                {
                    "time": _iso(p.time),
                    "value": p.value,
                    "device_id": p.device_id,
                    "quantity": p.quantity.value if p.quantity else None,
                }
                for p in alert.evidence[-10:]
            ],
        }

    def _alerts(self) -> dict[str, Any]:
        order = {"firing": 0, "pending": 1, "acknowledged": 2, "silenced": 3}
        severity = {"critical": 0, "warning": 1, "info": 2}
        active = sorted(
            self.alerts.values(),
            key=lambda a: (order.get(a.state.value, 9), severity[a.severity.value], a.started_at),
        )
        return {
            "active": [self._alert_view(a) for a in active],
            "resolved": [self._alert_view(a) for a in reversed(self.resolved)],
        }

    def _gateways(self) -> dict[str, Any]:
        now = self.clock()
        rows = []
        for view in self.gateways.values():
            status, received = view.status, view.newest.received
            # an unsynchronized clock's time is hours off: say when the console heard it
            seen = received if view.clock_wrong else status.time
            rows.append(
                {
                    "gateway_id": status.gateway_id,
                    "last_seen": _iso(seen),
                    "age_s": round((now - seen).total_seconds(), 1),
                    "stale": now - received > self.limits.stale_after,
                    "clock_synchronized": False if view.clock_wrong else status.clock_synchronized,
                    "reported_time": _iso(status.time),
                    "uptime_s": status.uptime_s,
                    "software_version": status.software_version,
                    "buffer_depth": status.buffer_depth,
                    "buffer_bytes": status.buffer_bytes,
                    "buffer_capacity_bytes": status.buffer_capacity_bytes,
                    "buffer_oldest_age_s": status.buffer_oldest_age_s,
                    "outage_capacity_hours": status.outage_capacity_hours,
                    "dropped": dict(status.dropped),
                    "dropped_total": sum(status.dropped.values()),
                    "decode_errors": dict(status.decode_errors),
                    "decode_errors_total": sum(status.decode_errors.values()),
                    "sources": {k: v.value for k, v in status.sources.items()},
                    "readings_sent_total": status.readings_sent_total,
                }
            )
        rows.sort(key=lambda r: str(r["gateway_id"]))
        return {"gateways": rows}

    def readings_rate(self) -> float:
        """Readings per second over the last 10 s of input."""
        now = math.floor(self.clock().timestamp())
        recent = sum(n for t, n in self._rate if 0 < now - t <= 10)
        return round(recent / 10.0, 1)

    def _stats(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "rejected": dict(self.rejected),
            "readings_per_s": self.readings_rate(),
            "devices": len(self.devices),
            "series": len(self.device_series) + len(self.zone_series),
            "now": self.clock().isoformat(),
            "feed": {"connected": self.feed_connected, "error": self.feed_error},
        }
