"""Stage 2: zone windows. Device partials (from :mod:`stream.windows`) -> KpiValues.

Readings are keyed by gateway, but a zone's devices may sit behind several gateways and so
in several partitions. Stage 1 therefore closes *per-device* windows and re-keys them by
zone (an internal topic, partitioned by :func:`partition_for`), and this stage combines
them. It closes a zone window only when the watermark of *every* stage-1 source has passed
its end (:meth:`ZoneWindows.advance`), so no device's partial can still be on its way; a
source whose worker died holds the zone back until its partition is reassigned, instead of
a premature, incomplete KPI. Every base window of a zone is closed, even one in which no
device sent anything, so silent devices show up with completeness 0: a device declared in
the config for as long as it is declared, one only seen in the readings from its first
window with data (not before, however the input arrives) until it has been silent for
``forget_undeclared_after`` (by event time, at the close of the first window that far after
its last one with data, so the live job and ``kpi eval`` forget it alike; counted in
``forgotten_devices`` and logged). It is expected again from its next reading.

A device heard by several gateways (LoRaWAN names the best-signal gateway of each uplink)
has one partial per gateway for a window, possibly from several stage-1 partitions. They
are kept side by side, keyed by gateway (a partial sent again after a stage-1 restart
replaces its own copy instead of counting twice), and merged when the window closes:
values concatenated in gateway order, a reading that came through two gateways (same
seq and event time, a failed network-server deduplication) kept once and counted in
``duplicates``.

A partial for a zone window already closed cannot be merged any more. A stage-1 source
hands out a window before the watermark that covers it, and a reading for a window behind
its watermark is late there (counted and routed), so such a partial is either one the
source sends *again* after a restart (its window ends at or before the source's
watermark: already merged, skipped and counted in ``replayed_partials``) or a broken
promise: dropped, counted in ``stale_partials``/``stale_readings``, logged (at most once a
minute) and exported as a metric. A zone's first window is only fixed when a window of it
closes, from the data it has by then: a zone first heard from a fast partition still
takes the earlier windows of a slower one.

The same class runs offline in ``climastream kpi eval`` with a single source.
"""

from __future__ import annotations

import logging
import time as _time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from climastream.contract import KpiValue, Quantity
from climastream.quantities import CANONICAL_UNITS
from stream import formulas as f
from stream.config import StreamConfig
from stream.grid import WindowGrid
from stream.registry import KpiDef, enabled
from stream.windows import US, DevicePartial, from_us

_T = Quantity.TEMPERATURE.value
_RH = Quantity.RELATIVE_HUMIDITY.value
_NOISE = Quantity.NOISE_LAEQ.value
_SUMMED = {
    Quantity.VEHICLE_COUNT.value: "traffic.vehicles",
    Quantity.ENERGY.value: "energy.kwh",
    Quantity.WATER_VOLUME.value: "water.m3",
}
_EAQI = [p.value for p in f.EAQI_POLLUTANTS]
#: at most this many empty base windows are synthesised per zone on one watermark jump
MAX_GAP_WINDOWS = 10_000
#: stale partials are logged at most this often (each time with the counts so far)
STALE_LOG_INTERVAL_S = 60.0
#: layout of :meth:`ZoneWindows.snapshot` ("v"); 2: pending partials per device per gateway
SNAPSHOT_VERSION = 2

log = logging.getLogger(__name__)


def _is_partial(value: dict[str, Any]) -> bool:
    """Whether a pending slot's entry for a device in a snapshot without a version is one
    partial (``{device: partial}``, before partials were kept per gateway) rather than
    ``{gateway: partial}`` (the same layout as version 2, written before the version was):
    a partial's "ws" is its start in µs, where a gateway named "ws" maps to a partial."""
    return isinstance(value.get("ws"), int) and isinstance(value.get("d"), str)


def partition_for(key: str, partitions: int) -> int:
    """The internal-topic partition of a zone (or zone-less device) key: stable crc32."""
    return zlib.crc32(key.encode()) % partitions


def routing_keys(partial: DevicePartial, config: StreamConfig) -> list[tuple[str, bool]]:
    """Where a closed device window goes: its zone (or its device id when it has no zone),
    plus, for the UHI reference, every other declared zone (flagged as reference)."""
    own = partial["z"] or partial["d"]
    keys = [(own, False)]
    ref = config.reference
    if ref is not None and _T in partial["q"]:
        is_ref = partial["d"] == ref.device_id or (
            ref.zone is not None and partial["z"] == ref.zone
        )
        if is_ref:
            keys.extend((zone, True) for zone in declared_zones(config) if zone != own)
    return keys


def declared_zones(config: StreamConfig) -> list[str]:
    zones = set(config.zones)
    zones.update(d.zone for d in config.devices.values() if d.zone)
    return sorted(zones)


@dataclass
class ZoneStats:
    partials: int = 0
    # arrived after their zone window closed, not sent again: dropped (counted, logged)
    stale_partials: int = 0
    stale_readings: int = 0  # the readings in them
    # sent again by a stage-1 source replaying after a restart: already merged, skipped
    replayed_partials: int = 0
    windows: int = 0
    kpis: int = 0
    skipped_windows: int = 0
    duplicates: int = 0  # readings of a device that came through two gateways (kept once)
    # undeclared devices silent for forget_undeclared_after, no longer expected
    forgotten_devices: int = 0


#: ZoneStats counters kept out of a snapshot's "stats" (see ZoneWindows.snapshot)
_NEWER_STATS = ("forgotten_devices",)


class _Acc:
    """Per-quantity accumulation over several devices (zone scope)."""

    __slots__ = ("count", "total", "values")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.total = 0.0
        self.count = 0


class ZoneWindows:
    """Zone stage over the zone keys one partition owns (offline: all of them)."""

    def __init__(
        self,
        config: StreamConfig,
        sources: int,
        owns: Callable[[str], bool] = lambda key: True,
        only_kpi: str | None = None,
    ) -> None:
        self.config = config
        self.kpis: dict[str, KpiDef] = enabled(config, only_kpi)
        self.sources = sources
        self.owns = owns
        self.size_us = config.window // timedelta(microseconds=1)
        self.eaqi_us = config.eaqi_period // timedelta(microseconds=1)
        self.night_us = config.uhi_night_window // timedelta(microseconds=1)
        forget = config.forget_undeclared_after
        self.forget_us = None if forget is None else forget // timedelta(microseconds=1)
        self.tz: ZoneInfo = config.tz
        # base windows and EAQI periods follow the local clock (stream.grid)
        self.grid = WindowGrid(self.size_us, self.tz)
        self.eaqi_grid = WindowGrid(self.eaqi_us, self.tz)
        self.table = f.EAQI_TABLES[config.eaqi_table]
        self.stats = ZoneStats()
        self._src_wm: dict[str, int] = {}
        self._final_limit = 0
        self._stale_log_at = 0.0  # monotonic time before which no stale partial is logged
        # key -> state; see _key_state for the layout
        self._keys: dict[str, dict[str, Any]] = {}
        # the keys the config names (a declared zone, or a declared device's key): kept for
        # good; any other is let go once nothing in it is expected or open (_retired)
        self._declared_keys = set(declared_zones(config)) | {
            device.zone or device_id for device_id, device in config.devices.items()
        }
        for device_id, device in config.devices.items():
            key = device.zone or device_id
            if owns(key):
                known = self._key_state(key, device.zone)["known"]
                known[device_id] = [
                    device.cadence // timedelta(microseconds=1),
                    [q.value for q in device.quantities],
                ]
        for zone in declared_zones(config):
            if owns(zone):
                self._key_state(zone, zone)

    # ------------------------------------------------------------------ state

    def _key_state(self, key: str, zone: str | None) -> dict[str, Any]:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = {
                "zone": zone,
                "next": None,  # start of the next base window to close
                # ws -> {"dev": {device: {gateway: partial}}, "ref": (the same)}
                "pending": {},
                "known": {},  # device -> [cadence_us, [quantities]]
                # undeclared device -> start (µs) of its first window with data since it
                # became known: not expected before it (a declared device, or one from a
                # checkpoint from before, has none: expected in every window)
                "since": {},
                # undeclared device -> end (µs) of its last closed window with data; a
                # checkpoint from before has none: counted from the first close after it
                "heard": {},
                "eaqi": {},  # pollutant -> {period_start: [total, count]}
                "eaqi_means": {},  # pollutant -> {period_start: mean} (running PM means)
                "days": {},  # local date iso -> {"tmax", "tcount", "uhi_max"}
                "nights": {},  # local date iso -> [zone_sum, zone_n, ref_sum, ref_n]
                "lden": {},  # scope -> {lden date iso -> {"d"|"e"|"n": [energy, count]}}
                "heatwave": [0, 0],
            }
        return state

    def snapshot(self) -> dict[str, Any]:
        def ws_items(mapping: dict[int, Any]) -> list[list[Any]]:
            return [[k, v] for k, v in mapping.items()]

        keys = {}
        for key, st in self._keys.items():
            keys[key] = {
                **st,
                "pending": ws_items(st["pending"]),
                "eaqi": {p: ws_items(v) for p, v in st["eaqi"].items()},
                "eaqi_means": {p: ws_items(v) for p, v in st["eaqi_means"].items()},
            }
        return {
            "v": SNAPSHOT_VERSION,
            "src": self._src_wm,
            "keys": keys,
            # a counter newer than the worker of the last release goes beside "stats",
            # which that worker restores whole (a rolling upgrade hands it partitions)
            "stats": {k: v for k, v in asdict(self.stats).items() if k not in _NEWER_STATS},
            "stats_newer": {k: getattr(self.stats, k) for k in _NEWER_STATS},
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self._src_wm = dict(snap["src"])
        self.stats = ZoneStats(**snap.get("stats", {}), **snap.get("stats_newer", {}))
        for key, st in snap["keys"].items():
            st["pending"] = {int(k): v for k, v in st["pending"]}
            if snap.get("v", 1) < 2:
                for slot in st["pending"].values():
                    for kind in ("dev", "ref"):
                        slot[kind] = {
                            device: {p["g"]: p} if _is_partial(p) else p
                            for device, p in slot[kind].items()
                        }
            st["eaqi"] = {p: {int(k): v for k, v in items} for p, items in st["eaqi"].items()}
            st["eaqi_means"] = {
                p: {int(k): v for k, v in items} for p, items in st["eaqi_means"].items()
            }
            st.setdefault("heard", {})
            # a device declared since the checkpoint is expected in every window
            declared = self.config.devices
            st["since"] = {d: at for d, at in st.get("since", {}).items() if d not in declared}
            self._keys[key] = st
            self._onto_local_grid(st)

    def _onto_local_grid(self, st: dict[str, Any]) -> None:
        """Move what a checkpoint from before windows followed the local clock holds on the
        UTC grid (a zone whose offset is not whole hours; nothing in a whole-hour zone) onto
        it: device windows waiting in the pending slots go where :meth:`add` puts them now,
        an EAQI period being summed joins the local period that holds its base windows so
        far, from the UTC period's start at the earliest (so it holds only the base windows
        after the last UTC period closed). ``next`` stays: the next window runs from it to
        the next local boundary."""
        moved: list[tuple[str, DevicePartial]] = []
        for slot in st["pending"].values():
            for kind in ("dev", "ref"):
                for pieces in slot[kind].values():
                    for gateway, partial in list(pieces.items()):
                        if "@utc" in gateway or self.grid.on_grid(partial["ws"], partial["we"]):
                            continue
                        del pieces[gateway]
                        moved.append((kind, partial))
        for kind, partial in moved:
            ws, gateway = self._utc_window(st, partial)
            slot = st["pending"].setdefault(ws, {"dev": {}, "ref": {}})
            slot[kind].setdefault(partial["d"], {})[gateway] = partial
        for ws in [ws for ws, slot in st["pending"].items() if not slot["dev"] and not slot["ref"]]:
            del st["pending"][ws]
        upto = st["next"]
        for periods in st["eaqi"].values():
            for period in [p for p in periods if self.eaqi_grid.start(p) != p]:
                folded_to = period + self.eaqi_us if upto is None else upto
                # not before the UTC period's start: the local hour before it was emitted
                local = max(self.eaqi_grid.start(min(folded_to, period + self.eaqi_us) - 1), period)
                total, count = periods.pop(period)
                entry = periods.setdefault(local, [0.0, 0])
                entry[0] += total
                entry[1] += count

    # ------------------------------------------------------------------ input

    def add(
        self, key: str, partial: DevicePartial, reference: bool, source: str | None = None
    ) -> None:
        """One closed device window, routed here by :func:`routing_keys`, from the stage-1
        ``source`` (the one :meth:`advance` names; None: not known)."""
        self.stats.partials += 1
        if source is not None and partial["we"] <= self._src_wm.get(source, -1):
            # the source's watermark already covered this window, so it was sent before:
            # the source is replaying after a restart, and the first copy is in
            self.stats.replayed_partials += 1
            return
        state = self._key_state(key, partial["z"] if not reference else key)
        ws = partial["ws"]
        gateway = partial["g"]
        if not self.grid.on_grid(ws, partial["we"]):
            ws, gateway = self._utc_window(state, partial)
        upto = state["next"]
        if upto is not None and ws < upto:
            if partial["we"] <= upto:
                self._stale(key, partial, source)
                return
            # a window across a zone stage restored from before windows followed the local
            # clock (its next window starts off the local grid): it joins that window
            ws = upto
        slot = state["pending"].setdefault(ws, {"dev": {}, "ref": {}})
        # per gateway: a partial sent again (stage 1 replaying after a crash) replaces its
        # copy; another gateway's partial of the same device and window joins it
        slot["ref" if reference else "dev"].setdefault(partial["d"], {})[gateway] = partial
        if not reference:
            self._know(state, partial, ws)

    def _know(self, state: dict[str, Any], partial: DevicePartial, ws: int) -> None:
        """Expect the partial's device and quantities in every window of its key from the
        window at ``ws`` (the partial's zone window) on.

        Not before: a device is learnt when its first partial *arrives*, and windows before
        it may still be open then (a backlog fetched in one go, a lagging partition, ``kpi
        eval`` closing everything at the end). Expecting it there would make completeness-0
        KPIs for windows before the device existed, depending on how the input arrived.
        """
        known = state["known"]
        device = partial["d"]
        entry = known.get(device)
        if entry is None:
            cadence = self.config.cadence_of(device)
            entry = known[device] = [cadence // timedelta(microseconds=1), []]
            if device not in self.config.devices:
                state["since"][device] = ws
        elif device in state["since"]:
            state["since"][device] = min(state["since"][device], ws)
        for quantity in partial["q"]:
            if quantity not in entry[1]:
                entry[1].append(quantity)

    def _utc_window(self, state: dict[str, Any], partial: DevicePartial) -> tuple[int, str]:
        """The zone window and the gateway slot of a device window on the UTC grid: one a
        stage-1 checkpoint from before windows followed the local clock held (a zone whose
        offset is not whole hours). It joins the local window that holds its end, or the
        next one to close if that is later: that window closes only once the watermark is
        past the device window's end, so it has arrived. Its readings (up to one window
        before that window's start) count there, once; under its own slot name, so the
        same device's local window from the same gateway joins it instead of replacing it,
        while the same UTC window sent again (a replay) replaces its copy."""
        ws = self.grid.start(partial["we"] - 1)
        if state["next"] is not None and ws < state["next"]:
            ws = state["next"]
        return ws, f"{partial['g']}@utc{partial['ws']}"

    def _stale(self, key: str, partial: DevicePartial, source: str | None) -> None:
        readings = sum(len(values) for values in partial["q"].values())
        self.stats.stale_partials += 1
        self.stats.stale_readings += readings
        now = _time.monotonic()
        if now >= self._stale_log_at:
            self._stale_log_at = now + STALE_LOG_INTERVAL_S
            log.warning(
                "dropped a device window for a zone window already closed: key=%s device=%s "
                "gateway=%s window_start=%s source=%s readings=%d (so far %d windows, %d "
                "readings; logged at most every %.0f s)",
                key,
                partial["d"],
                partial["g"],
                from_us(partial["ws"]).isoformat(),
                source,
                readings,
                self.stats.stale_partials,
                self.stats.stale_readings,
                STALE_LOG_INTERVAL_S,
            )

    def advance(self, source: str, horizon: int) -> None:
        """A stage-1 source has closed (and sent) every window ending at or before
        ``horizon`` (µs)."""
        if horizon > self._src_wm.get(source, -1):
            self._src_wm[source] = horizon

    def watermark(self) -> int | None:
        if len(self._src_wm) < self.sources:
            return None
        return min(self._src_wm.values())

    def source_watermarks(self) -> dict[str, int]:
        """Each stage-1 source's watermark (µs) as this stage has it; a source not in it
        has sent none yet (the zone windows wait for it all the same)."""
        return dict(self._src_wm)

    def held(self) -> tuple[int, int] | None:
        """The zone windows this stage holds for want of a watermark: how many base
        windows with device windows in them are pending, and the start (µs) of the oldest;
        None when there are none. It goes over every pending window (for metrics and a
        rate-limited log line, not per record)."""
        count = 0
        oldest: int | None = None
        for state in self._keys.values():
            pending = state["pending"]
            if pending:
                count += len(pending)
                first = min(pending)
                if oldest is None or first < oldest:
                    oldest = first
        return None if oldest is None else (count, oldest)

    # ------------------------------------------------------------------ closing

    def close(self, final: bool = False, now: datetime | None = None) -> list[KpiValue]:
        """Emit every zone window that the watermark closes.

        ``final`` (end of an offline replay) closes every base window with data, and every
        longer window (hour, day) that has ended by ``now - grace``, as the live job does
        once the wall clock has passed it; a window still running at ``now`` stays open.
        """
        self._final_limit = (
            (now - self.config.grace - from_us(0)) // timedelta(microseconds=1) if now else 0
        )
        watermark = self.watermark()
        emitted: list[KpiValue] = []
        retired: list[str] = []
        for key, state in self._keys.items():
            grid = self.grid
            if final:
                ends = [grid.end(ws) for ws in state["pending"]]
                limit = max(ends) if ends else None
            else:
                limit = watermark
            if limit is None:
                if final and state["next"] is not None:
                    # every base window of this key is already closed (the watermark got
                    # there during the replay), but its hour/day windows still have to be
                    emitted.extend(self._close_long(key, state, state["next"], final))
                continue
            if state["next"] is None:
                # fixed only now, not by the first partial: a zone first heard from a fast
                # partition still takes the earlier windows a slower one sends later
                if state["pending"]:
                    first = min(state["pending"])
                    if grid.end(first) > limit:
                        continue  # nothing to close yet; an earlier window may still come
                    state["next"] = first
                elif state["known"]:
                    state["next"] = grid.start(grid.start(limit) - 1)
                else:
                    continue
            pending = state["pending"]
            while grid.end(state["next"]) <= limit:
                ws = state["next"]
                if ws not in pending:
                    # a silent stretch: emit at most MAX_GAP_WINDOWS empty windows of it
                    following = min((w for w in pending if w > ws), default=None)
                    gap_end = following if following is not None else grid.start(limit)
                    if (gap_end - ws) // self.size_us > MAX_GAP_WINDOWS:
                        skip_to = grid.start(gap_end - MAX_GAP_WINDOWS * self.size_us)
                        self.stats.skipped_windows += (skip_to - ws) // self.size_us
                        state["next"] = skip_to
                        continue
                slot = pending.pop(ws, {"dev": {}, "ref": {}})
                we = grid.end(ws)
                emitted.extend(self._close_base(key, state, ws, we, slot))
                state["next"] = we
            emitted.extend(self._close_long(key, state, limit, final))
            if self._retired(key, state):
                retired.append(key)
        for key in retired:
            del self._keys[key]
        self.stats.kpis += len(emitted)
        return emitted

    def _retired(self, key: str, state: dict[str, Any]) -> bool:
        """Whether ``key`` can be let go: not in the config, every device of it forgotten
        (:meth:`_forget`), no window of it waiting or open, and nothing it holds would change
        a KPI if it came back (a device heard again starts a new key, as a new one does).

        Without this, the state of a retired device without a zone (a LoRaWAN node behind a
        gateway with no default zone is keyed by its own id) or of a retired undeclared zone
        stayed in memory and in every checkpoint for good, and was closed every window.
        """
        if key in self._declared_keys or state["known"] or state["pending"]:
            return False
        if state["days"] or state["nights"] or any(state["lden"].values()):
            return False
        if any(state["eaqi"].values()):
            return False
        upto = state["next"]
        if upto is None:
            return True
        # running PM means a later period would still average over
        horizon = upto - (self.config.eaqi_running_periods + 1) * self.eaqi_us
        if any(p >= horizon for means in state["eaqi_means"].values() for p in means):
            return False
        # a heatwave run that a day with data right after it would continue
        run, last_day = state["heatwave"][0], (state["heatwave"] + [None])[2]
        if run and last_day is not None:
            today = self._local(upto).date()
            if date.fromisoformat(last_day) + timedelta(days=1) >= today:
                return False
        return True

    # ------------------------------------------------------------------ KPI helpers

    def _kpi(
        self,
        kpi_id: str,
        state: dict[str, Any],
        ws: int,
        we: int,
        value: float,
        count: int,
        completeness: float,
        *,
        device_id: str | None = None,
        quantity: str | None = None,
        band: str | None = None,
        attributes: dict[str, str] | None = None,
        model_ids: set[str] | None = None,
        zone_scope: bool = True,
    ) -> KpiValue | None:
        kdef = self.kpis.get(kpi_id)
        if kdef is None:
            return None
        unit = kdef.unit or (CANONICAL_UNITS[Quantity(quantity)] if quantity else "1")
        return KpiValue(
            kpi_id=kpi_id,
            kpi_version=kdef.version,
            zone=state["zone"],
            device_id=device_id,
            quantity=Quantity(quantity) if quantity else None,
            window_start=from_us(ws),
            window_end=from_us(we),
            value=value,
            unit=unit,
            sample_count=count,
            completeness=max(0.0, min(1.0, completeness)),
            band=band,
            attributes=attributes or {},
            model_ids=tuple(sorted(model_ids or ())),
        )

    def _forget(self, key: str, state: dict[str, Any], device_id: str, ws: int) -> bool:
        """Whether the undeclared ``device_id``, silent in the window from ``ws``, has been
        silent for ``forget_undeclared_after``; if so it is no longer expected."""
        if self.forget_us is None:
            return False
        since = state["heard"].setdefault(device_id, ws)
        if ws - since < self.forget_us:
            return False
        del state["known"][device_id]
        del state["heard"][device_id]
        state["since"].pop(device_id, None)
        self.stats.forgotten_devices += 1
        log.info(
            "zone %s: device %s, not in the stream config, has sent nothing since %s: no "
            "longer expected (forget_undeclared_after %s); declare it to keep it expected",
            key,
            device_id,
            from_us(since).isoformat(),
            self.config.forget_undeclared_after,
        )
        return True

    def _expected(self, state: dict[str, Any], quantity: str, start: int, end: int) -> float:
        """Readings of ``quantity`` the key's devices should have sent from ``start`` to
        ``end`` (µs): each device expected there (see :meth:`_expects`) at its cadence."""
        total = 0.0
        for device_id, (cadence, quantities) in state["known"].items():
            if quantity in quantities and self._expects(state, device_id, end):
                total += (end - start) / cadence
        return total

    @staticmethod
    def _expects(state: dict[str, Any], device_id: str, end: int) -> bool:
        """Whether a known device is expected in a span ending at ``end``: unless it was
        first heard after it. A device first heard inside a longer span (a day, an EAQI
        period) is expected for all of it, as when that span closes after its first data."""
        return state["since"].get(device_id, end - 1) < end

    def _local(self, micros: int) -> datetime:
        return from_us(micros).astimezone(self.tz)

    def _local_to_us(self, day: date, hour: int) -> int:
        local = datetime.combine(day, time(hour), tzinfo=self.tz)
        return int(local.timestamp()) * US

    def _merged(self, pieces: dict[str, DevicePartial], count: bool) -> DevicePartial:
        """One device's partials of one window (one per gateway) as one partial.

        Gateways in sorted order, so the values (and float sums) do not depend on which
        partial arrived first. A reading seen through an earlier gateway (same quantity,
        seq and event time) is dropped and, when ``count`` (not for the copies of the
        reference sent to other zones), counted in ``stats.duplicates``.
        """
        if len(pieces) == 1:
            return next(iter(pieces.values()))
        ordered = [pieces[g] for g in sorted(pieces)]
        # without "s" and "t": nothing reads them after the merge
        merged = {k: v for k, v in ordered[0].items() if k not in ("s", "t")}
        merged.update(q={}, l={}, m=[])
        seen: dict[str, set[tuple[int, int]]] = {}
        for piece in ordered:
            seqs, times = piece.get("s") or {}, piece.get("t") or {}
            for quantity, values in piece["q"].items():
                out = merged["q"].setdefault(quantity, [])
                q_seqs, q_times = seqs.get(quantity), times.get(quantity)
                if q_seqs is None or q_times is None:  # a partial from before "s" and "t"
                    out.extend(values)
                    continue
                have = seen.setdefault(quantity, set())
                base = piece["ws"]  # "t" counts from the piece's own start
                for value, seq, at in zip(values, q_seqs, q_times, strict=True):
                    if (seq, base + at) in have:
                        self.stats.duplicates += count
                        continue
                    have.add((seq, base + at))
                    out.append(value)
            for quantity, last in piece["l"].items():
                kept = merged["l"].get(quantity)
                if kept is None or last[0] >= kept[0]:
                    merged["l"][quantity] = last
            for model in piece["m"]:
                if model not in merged["m"]:
                    merged["m"].append(model)
        return merged

    # ------------------------------------------------------------------ base window

    def _close_base(
        self, key: str, state: dict[str, Any], ws: int, we: int, slot: dict[str, Any]
    ) -> list[KpiValue]:
        self.stats.windows += 1
        span = we - ws  # the window size, but where the shift of the grid changes
        out: list[KpiValue | None] = []
        slot = {
            kind: {d: self._merged(pieces, kind == "dev") for d, pieces in slot[kind].items()}
            for kind in ("dev", "ref")
        }
        devices: dict[str, DevicePartial] = slot["dev"]
        zone_acc: dict[str, _Acc] = {}
        zone_models: set[str] = set()
        fills: list[float] = []
        # ---- device scope
        heard: dict[str, int] = state["heard"]
        for merged in devices.values():
            # a device forgotten while a window of it waited here (a replay that added it
            # before closing the windows in between): known again from its window on
            self._know(state, merged, ws)
        since: dict[str, int] = state["since"]
        for device_id, (cadence, quantities) in sorted(state["known"].items()):
            if since.get(device_id, ws) > ws:
                continue  # first heard in a later window: not expected yet
            partial = devices.get(device_id)
            per_q = span / cadence
            if device_id not in self.config.devices:
                if partial is not None:
                    heard[device_id] = we
                elif self._forget(key, state, device_id, ws):
                    continue
            if partial is None:
                out.append(
                    self._kpi("completeness", state, ws, we, 0.0, 0, 0.0, device_id=device_id)
                )
                continue
            models = set(partial["m"])
            zone_models |= models
            received = sum(len(v) for v in partial["q"].values())
            nq = max(len(quantities), len(partial["q"]), 1)
            dev_completeness = received / (per_q * nq)
            out.append(
                self._kpi(
                    "completeness", state, ws, we, min(1.0, dev_completeness), received,
                    dev_completeness, device_id=device_id, model_ids=models,
                )
            )  # fmt: skip
            means: dict[str, float] = {}
            for quantity, values in sorted(partial["q"].items()):
                count = len(values)
                completeness = count / per_q
                total = sum(values)
                means[quantity] = total / count
                acc = zone_acc.get(quantity)
                if acc is None:
                    acc = zone_acc[quantity] = _Acc()
                acc.values.extend(values)
                acc.total += total
                acc.count += count
                common = {"device_id": device_id, "quantity": quantity, "model_ids": models}
                out.extend(self._stats(state, ws, we, values, total, completeness, **common))
                out.extend(
                    self._quantity_kpis(state, ws, we, quantity, values, total, completeness,
                                        device_id=device_id, models=models)
                )  # fmt: skip
                if quantity == Quantity.BIN_FILL_LEVEL.value:
                    level = partial["l"][quantity][1]
                    fills.append(level)
                    out.append(
                        self._kpi("waste.fill_level", state, ws, we, level, count, completeness,
                                  device_id=device_id, quantity=quantity, model_ids=models)
                    )  # fmt: skip
            if _T in means and _RH in means:
                completeness = min(len(partial["q"][_T]), len(partial["q"][_RH])) / per_q
                count = len(partial["q"][_T]) + len(partial["q"][_RH])
                out.extend(
                    self._heat(state, ws, we, means[_T], means[_RH], count, completeness,
                               device_id=device_id, models=models)
                )  # fmt: skip
        zone = state["zone"]
        if zone is None:  # a zone-less device: device scope only
            return [k for k in out if k is not None]
        # ---- zone scope
        zone_means: dict[str, float] = {}
        for quantity, acc in sorted(zone_acc.items()):
            expected = self._expected(state, quantity, ws, we)
            completeness = acc.count / expected if expected else 1.0
            zone_means[quantity] = acc.total / acc.count
            out.extend(
                self._stats(state, ws, we, acc.values, acc.total, completeness,
                            quantity=quantity, model_ids=zone_models)
            )  # fmt: skip
            out.extend(
                self._quantity_kpis(state, ws, we, quantity, acc.values, acc.total,
                                    completeness, device_id=None, models=zone_models)
            )  # fmt: skip
            if quantity in _EAQI:
                periods = state["eaqi"].setdefault(quantity, {})
                period = self.eaqi_grid.start(ws)
                if period not in periods:
                    # after an upgrade from UTC windows (_onto_local_grid) a period may start
                    # off the local grid: where this window or a restored period does
                    if self.grid.start(ws) != ws:
                        period = max(period, ws)
                    period = next((p for p in periods if period < p <= ws), period)
                entry = periods.setdefault(period, [0.0, 0])
                entry[0] += acc.total
                entry[1] += acc.count
        if _T in zone_means and _RH in zone_means:
            count = zone_acc[_T].count + zone_acc[_RH].count
            expected = self._expected(state, _T, ws, we) + self._expected(state, _RH, ws, we)
            out.extend(
                self._heat(state, ws, we, zone_means[_T], zone_means[_RH], count,
                           count / expected if expected else 1.0, device_id=None,
                           models=zone_models)
            )  # fmt: skip
        if fills:
            over = sum(1 for level in fills if level >= self.config.bin_threshold_pct)
            out.append(
                self._kpi("waste.bins_over_threshold", state, ws, we, float(over), len(fills),
                          len(fills) / max(1, self._expected(state, Quantity.BIN_FILL_LEVEL.value,
                                                             ws, we)),
                          attributes={"threshold_pct": f"{self.config.bin_threshold_pct:g}"})
            )  # fmt: skip
        local = self._local(ws)
        if _T in zone_acc:
            day = state["days"].setdefault(
                local.date().isoformat(), {"tmax": None, "tcount": 0, "uhi_max": None}
            )
            tmax = max(zone_acc[_T].values)
            day["tmax"] = tmax if day["tmax"] is None else max(day["tmax"], tmax)
            day["tcount"] += zone_acc[_T].count
            ref = self._reference_temperature(key, slot)
            if ref is not None:
                ref_total, ref_count = ref
                uhi = zone_means[_T] - ref_total / ref_count
                expected = self._expected(state, _T, ws, we)
                completeness = zone_acc[_T].count / expected if expected else 1.0
                out.append(
                    self._kpi("uhi.intensity", state, ws, we, uhi,
                              zone_acc[_T].count + ref_count, completeness,
                              quantity=_T, model_ids=zone_models,
                              attributes={"reference_mean": f"{ref_total / ref_count:.3f}"})
                )  # fmt: skip
                day["uhi_max"] = uhi if day["uhi_max"] is None else max(day["uhi_max"], uhi)
                for night_date in (local.date(), local.date() - timedelta(days=1)):
                    start = self._local_to_us(night_date, self.config.uhi_night_hour)
                    if start <= ws < start + self.night_us:
                        acc4 = state["nights"].setdefault(night_date.isoformat(), [0.0, 0, 0.0, 0])
                        acc4[0] += zone_acc[_T].total
                        acc4[1] += zone_acc[_T].count
                        acc4[2] += ref_total
                        acc4[3] += ref_count
        if _NOISE in zone_acc or any(_NOISE in p["q"] for p in devices.values()):
            # the Lden day runs from 07:00 to 07:00 *local clock time*, whatever the UTC
            # offset does in between: the night of a DST change is 7 or 9 hours long
            hour = local.hour
            lden_date = local.date() - timedelta(days=1) if hour < 7 else local.date()
            lden_day = lden_date.isoformat()
            noise_period = "d" if 7 <= hour < 19 else ("e" if 19 <= hour < 23 else "n")
            scopes = [(device_id, p["q"][_NOISE]) for device_id, p in devices.items()
                      if _NOISE in p["q"]]  # fmt: skip
            scopes.append(("", zone_acc[_NOISE].values))
            for scope, levels in scopes:
                day_acc = state["lden"].setdefault(scope, {}).setdefault(lden_day, {})
                entry = day_acc.setdefault(noise_period, [0.0, 0])
                entry[0] += f.energy_sum(levels)
                entry[1] += len(levels)
        return [k for k in out if k is not None]

    def _reference_temperature(self, key: str, slot: dict[str, Any]) -> tuple[float, int] | None:
        ref = self.config.reference
        if ref is None or ref.zone == key:
            return None
        candidates = [p for p in slot["ref"].values()]
        if ref.device_id is not None:
            own = slot["dev"].get(ref.device_id)
            candidates = (
                [own] if own is not None else [p for p in candidates if p["d"] == ref.device_id]
            )
        values = [v for p in candidates for v in p["q"].get(_T, ())]
        if not values:
            return None
        return sum(values), len(values)

    def _stats(
        self,
        state: dict[str, Any],
        ws: int,
        we: int,
        values: list[float],
        total: float,
        completeness: float,
        *,
        quantity: str,
        device_id: str | None = None,
        model_ids: set[str] | None = None,
    ) -> list[KpiValue | None]:
        count = len(values)
        common: dict[str, Any] = {
            "device_id": device_id, "quantity": quantity, "model_ids": model_ids
        }  # fmt: skip
        return [
            self._kpi("stat.mean", state, ws, we, total / count, count, completeness, **common),
            self._kpi("stat.min", state, ws, we, min(values), count, completeness, **common),
            self._kpi("stat.max", state, ws, we, max(values), count, completeness, **common),
            self._kpi("stat.count", state, ws, we, float(count), count, completeness, **common),
            self._kpi(
                "stat.p95",
                state,
                ws,
                we,
                f.percentile(values, 95.0),
                count,
                completeness,
                **common,
            ),
        ]

    def _quantity_kpis(
        self,
        state: dict[str, Any],
        ws: int,
        we: int,
        quantity: str,
        values: list[float],
        total: float,
        completeness: float,
        *,
        device_id: str | None,
        models: set[str],
    ) -> list[KpiValue | None]:
        count = len(values)
        common: dict[str, Any] = {"device_id": device_id, "quantity": quantity,
                                  "model_ids": models}  # fmt: skip
        out: list[KpiValue | None] = []
        if quantity == _NOISE:
            out.append(
                self._kpi("noise.laeq", state, ws, we, f.laeq(values), count, completeness,
                          **common)
            )  # fmt: skip
        elif quantity in _SUMMED:
            kpi_id = _SUMMED[quantity]
            out.append(self._kpi(kpi_id, state, ws, we, total, count, completeness, **common))
            if quantity == Quantity.ENERGY.value:
                out.append(
                    self._kpi("energy.co2e_kg", state, ws, we,
                              total * self.config.co2e_kg_per_kwh, count, completeness,
                              attributes={"kg_per_kwh": f"{self.config.co2e_kg_per_kwh:g}"},
                              **common)
                )  # fmt: skip
            if quantity == Quantity.VEHICLE_COUNT.value and device_id is None:
                zone_cfg = self.config.zones.get(state["zone"] or "")
                if zone_cfg is not None and zone_cfg.area_km2:
                    out.append(
                        self._kpi("traffic.intensity_km2", state, ws, we,
                                  total / zone_cfg.area_km2, count, completeness,
                                  attributes={"area_km2": f"{zone_cfg.area_km2:g}"}, **common)
                    )  # fmt: skip
        elif quantity == Quantity.PARKING_OCCUPANCY.value:
            out.append(
                self._kpi("parking.occupancy", state, ws, we, total / count, count,
                          completeness, **common)
            )  # fmt: skip
        return out

    def _heat(
        self,
        state: dict[str, Any],
        ws: int,
        we: int,
        temperature: float,
        humidity: float,
        count: int,
        completeness: float,
        *,
        device_id: str | None,
        models: set[str],
    ) -> list[KpiValue | None]:
        if humidity <= 0.0:
            return []
        dew = f.dew_point(temperature, humidity)
        common: dict[str, Any] = {"device_id": device_id, "model_ids": models}
        attrs = {"temperature": f"{temperature:.3f}", "relative_humidity": f"{humidity:.3f}"}
        return [
            self._kpi("heat.dew_point", state, ws, we, dew, count, completeness,
                      attributes=attrs, **common),
            self._kpi("heat.heat_index", state, ws, we, f.heat_index(temperature, humidity),
                      count, completeness, attributes=attrs, **common),
            self._kpi("heat.humidex", state, ws, we, f.humidex(temperature, dew), count,
                      completeness, attributes=attrs, **common),
        ]  # fmt: skip

    # ------------------------------------------------------------------ long windows

    def _close_long(
        self, key: str, state: dict[str, Any], limit: int, final: bool
    ) -> list[KpiValue]:
        out: list[KpiValue | None] = []
        closed_to = state["next"]  # every base window before this is folded in
        if closed_to is None:
            return []
        if final:  # end of an offline replay: long windows that ended by now - grace
            closed_to = max(closed_to, self._final_limit)
        out.extend(self._close_eaqi(state, closed_to))
        out.extend(self._close_days(state, closed_to))
        out.extend(self._close_nights(state, closed_to))
        out.extend(self._close_lden(state, closed_to))
        return [k for k in out if k is not None]

    def _close_eaqi(self, state: dict[str, Any], closed_to: int) -> list[KpiValue | None]:
        grid = self.eaqi_grid
        periods = sorted(
            {p for per in state["eaqi"].values() for p in per if grid.end(p) <= closed_to}
        )
        out: list[KpiValue | None] = []
        n_run = self.config.eaqi_running_periods
        for period in periods:
            pe = grid.end(period)
            concentrations: dict[Quantity, float] = {}
            counts = 0
            expected_total = 0.0
            for pollutant in _EAQI:
                per = state["eaqi"].get(pollutant, {})
                entry = per.pop(period, None)
                if entry is None:
                    continue
                total, count = entry
                means = state["eaqi_means"].setdefault(pollutant, {})
                means[period] = total / count
                q = Quantity(pollutant)
                if q in f.EAQI_RUNNING_24H:
                    first = period - (n_run - 1) * self.eaqi_us
                    for old in [p for p in means if p < first]:
                        del means[old]
                    window_means = [m for p, m in means.items() if p >= first]
                    concentration = sum(window_means) / len(window_means)
                    start = first if grid.start(first) == first else grid.end(first)
                    averaging = f"running mean of {len(window_means)}/{n_run} periods"
                    completeness = len(window_means) / n_run
                else:
                    means.pop(period, None)
                    concentration = total / count
                    start = period
                    averaging = "period mean"
                    expected = self._expected(state, pollutant, period, pe)
                    completeness = count / expected if expected else 1.0
                counts += count
                expected_total += self._expected(state, pollutant, period, pe)
                concentrations[q] = concentration
                band = self.table.band_index(q, concentration)
                out.append(
                    self._kpi("eaqi.pollutant", state, start, pe, float(band), count,
                              completeness, quantity=pollutant, band=f.BANDS[band - 1],
                              attributes={"concentration": f"{concentration:.3f}",
                                          "averaging": averaging,
                                          "table": self.table.version})
                )  # fmt: skip
            if not concentrations:
                continue
            result = f.eaqi(self.table, concentrations)
            out.append(
                self._kpi("eaqi", state, period, pe, float(result.band_index), counts,
                          counts / expected_total if expected_total else 1.0,
                          band=result.band,
                          attributes={"dominant_pollutant": result.dominant_pollutant.value,
                                      "pollutants": ",".join(p.value for p in concentrations),
                                      "table": self.table.version})
            )  # fmt: skip
        return out

    def _close_days(self, state: dict[str, Any], closed_to: int) -> list[KpiValue | None]:
        out: list[KpiValue | None] = []
        for iso in sorted(state["days"]):
            day = date.fromisoformat(iso)
            start = self._local_to_us(day, 0)
            end = self._local_to_us(day + timedelta(days=1), 0)
            if end > closed_to:
                break
            acc = state["days"].pop(iso)
            expected = self._expected(state, _T, start, end)
            completeness = acc["tcount"] / expected if expected else 1.0
            if acc["uhi_max"] is not None:
                out.append(
                    self._kpi("uhi.daily_max", state, start, end, acc["uhi_max"], acc["tcount"],
                              completeness, quantity=_T)
                )  # fmt: skip
            consecutive, hot, last_iso = (state["heatwave"] + [None])[:3]
            run = f.HeatwaveState(consecutive, hot)
            if last_iso is not None and date.fromisoformat(last_iso) + timedelta(days=1) < day:
                run = f.heatwave_step(run, None)  # a day without data ends the run
            run = f.heatwave_step(run, acc["tmax"])
            state["heatwave"] = [run.consecutive_days, run.hot_days, iso]
            out.append(
                self._kpi("heatwave.status", state, start, end, 1.0 if run.in_heatwave else 0.0,
                          acc["tcount"], completeness, quantity=_T,
                          attributes={"consecutive_days": str(run.consecutive_days),
                                      "hot_days": str(run.hot_days),
                                      "tmax": f"{acc['tmax']:.2f}"})
            )  # fmt: skip
        return out

    def _close_nights(self, state: dict[str, Any], closed_to: int) -> list[KpiValue | None]:
        out: list[KpiValue | None] = []
        for iso in sorted(state["nights"]):
            start = self._local_to_us(date.fromisoformat(iso), self.config.uhi_night_hour)
            end = start + self.night_us
            if end > closed_to:
                break
            zsum, zn, rsum, rn = state["nights"].pop(iso)
            expected = self._expected(state, _T, start, end)
            out.append(
                self._kpi("uhi.night", state, start, end, zsum / zn - rsum / rn, zn + rn,
                          zn / expected if expected else 1.0, quantity=_T,
                          attributes={"local_hour": str(self.config.uhi_night_hour)})
            )  # fmt: skip
        return out

    def _close_lden(self, state: dict[str, Any], closed_to: int) -> list[KpiValue | None]:
        out: list[KpiValue | None] = []
        for scope, days in state["lden"].items():
            for iso in sorted(days):
                day = date.fromisoformat(iso)
                start = self._local_to_us(day, 7)
                end = self._local_to_us(day + timedelta(days=1), 7)
                if end > closed_to:
                    break
                periods = days.pop(iso)
                device_id = scope or None
                if state["zone"] is None and device_id is None:
                    continue
                total = sum(c for _, c in periods.values())
                if "n" in periods:
                    energy, count = periods["n"]
                    night_start = self._local_to_us(day, 23)
                    expected = self._scope_expected(state, scope, night_start, end)
                    out.append(
                        self._kpi("noise.lnight", state, night_start, end,
                                  f.level_from_energy(energy, count), count,
                                  count / expected if expected else 1.0,
                                  device_id=device_id, quantity=_NOISE)
                    )  # fmt: skip
                if all(p in periods for p in ("d", "e", "n")):
                    levels = {p: f.level_from_energy(*periods[p]) for p in ("d", "e", "n")}
                    expected = self._scope_expected(state, scope, start, end)
                    out.append(
                        self._kpi("noise.lden", state, start, end,
                                  f.lden(levels["d"], levels["e"], levels["n"]), total,
                                  total / expected if expected else 1.0,
                                  device_id=device_id, quantity=_NOISE,
                                  attributes={"lday": f"{levels['d']:.2f}",
                                              "levening": f"{levels['e']:.2f}",
                                              "lnight": f"{levels['n']:.2f}"})
                    )  # fmt: skip
        # a device's scope once its days are out and it is no longer known (forgotten):
        # otherwise every retired noise sensor left one behind for good
        for scope in [s for s, days in state["lden"].items() if s and not days]:
            if scope not in state["known"]:
                del state["lden"][scope]
        return out

    def _scope_expected(self, state: dict[str, Any], scope: str, start: int, end: int) -> float:
        if not scope:
            return self._expected(state, _NOISE, start, end)
        entry = state["known"].get(scope)
        if entry is None or not self._expects(state, scope, end):
            return 0.0
        return (end - start) / entry[0]
