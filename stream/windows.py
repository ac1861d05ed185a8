"""Stage 1: per-device event-time windows, kept as in-memory partials, closed by a watermark.

Pure and synchronous: the Faust agent and ``climastream kpi eval`` drive the same code.
Times are integer microseconds since the epoch (UTC) inside the engine, for speed.

* A reading belongs to the tumbling window of its event time on the city's local clock
  (:class:`stream.grid.WindowGrid`: an hour window in Kolkata starts at local :00, i.e.
  :30 UTC; in a whole-hour zone that is ``[start, start + size)`` on the UTC grid).
* Each gateway has its own event-time watermark (its newest event time, each reading's
  capped at the time its gateway received it, ``ingest_time``: a device whose clock runs
  ahead does not make the others late): a gateway's records are ordered within its
  partition, so lateness is decided per gateway (except for a gateway first heard late,
  below).
* A window of a gateway is *closed* once ``max(gateway event time, wall clock) - grace``
  passes its end. The wall clock counts only when the caller says the partition is caught
  up (no backlog), so a replay after a crash closes windows exactly as the first run did,
  while a quiet sensor's window still closes on time. A replay cannot repeat a wall-clock
  close, though: the caller checkpoints it before acting on it (:meth:`DeviceWindows.advance_wall`).
* A gateway the engine has not heard before starts with its windows closed up to the
  horizon already handed downstream (:meth:`DeviceWindows.horizon`, which therefore never
  goes back): the zone stage may have closed those zone windows, so its older readings
  are late (counted and routed) instead of being sent on and dropped there.
* A reading for a closed window is *late*: returned to the caller, which counts it and
  routes it to ``late-readings``. It is never dropped silently.
* ``(device_id, seq)`` already seen *from the same gateway*: a duplicate, counted and
  skipped, unless its event time is newer than anything the device sent through that
  gateway: then the device's counter restarted (:class:`SeenSeqs`), counted in
  ``counter_resets``, and the reading is kept.
* Everything here is per gateway: the windows (a device heard by two gateways has one
  window per gateway), the watermark and the deduplication memory. So once a gateway has
  been heard, what its readings become does not depend on which other gateways share the
  partition, or on how their records interleave. The exception is a gateway first heard
  after the partition's horizon moved on: it starts there, so its older readings are late.
  ``kpi eval`` learns the gateways of its whole input first, so it has no such case.
  The zone stage merges a device's windows from its gateways and drops a reading that
  arrived through two of them (same seq, same event time) there.
* A gateway silent for a day by the wall clock, with no window open, is forgotten (so is a
  device behind a gateway that still sends): its later readings are late, so nothing
  counts twice (:meth:`DeviceWindows.advance_wall`).

Closed windows leave as :class:`DevicePartial` dicts (the values per quantity), which the
zone stage (:mod:`stream.zones`) turns into KPIs; see ``stream/README.md`` for why.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from climastream.contract import Reading
from stream.grid import WindowGrid

US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: wire/snapshot form of one closed window of one device through one gateway
#: (orjson-friendly, short keys):
#: {"d": device_id, "g": gateway_id, "z": zone|None, "ws": start_us, "we": end_us,
#:  "q": {quantity: [values...]}, "l": {quantity: [event_us, value]}, "m": [model_ids],
#:  "s": {quantity: [seq...]}, "t": {quantity: [event_us - ws...]}}
#: "s" and "t" run parallel to "q": the zone stage needs them to drop a reading that came
#: through two gateways (same seq and event time). Partials from before they were added
#: lack them (their readings are merged without that check).
DevicePartial = dict[str, Any]


def to_us(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def from_us(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


@dataclass
class WindowStats:
    added: int = 0
    duplicates: int = 0
    late: int = 0
    closed: int = 0
    counter_resets: int = 0


class Seen(enum.Enum):
    """What :meth:`SeenSeqs.add` made of a reading's ``(device, seq)``."""

    NEW = "new"
    DUPLICATE = "duplicate"
    RESET = "reset"  # new too: the first reading of a restarted device counter


class SeenSeqs:
    """Per-device memory of sequence numbers: a floor (every seq at or below it counts as
    seen) plus the seqs seen above it, each with its event time.

    Gateway-assigned numbers arrive in order, so the floor just moves up and nothing is
    remembered individually. Numbers from a device's own counter have gaps by design (the
    edge numbers them ``counter * 256 + position in the frame``, and a lost LoRaWAN uplink
    skips an fCnt), so the floor cannot move past them by itself. Two bounds keep that
    memory, and so the checkpoint, small:

    * **Horizon** (``horizon_us``, event time behind the device's newest reading; the
      windows pass one window plus grace): an older seq is folded into the floor, gaps
      below it included. A reading that old lands in a closed window whatever it is, so
      folding never lets a duplicate into a KPI. Without it, a city's LoRaWAN devices
      each kept thousands of numbers: 100 devices on one partition made a 1.5 MB
      checkpoint after four days, more than Kafka takes in one record.
    * **Cap** (``cap`` per device, for fast devices within the horizon): the floor is
      raised past the oldest half.

    A reading at or below a folded or raised floor counts as a duplicate ("stale"). It is
    a redelivery, or a reading never seen whose number lay in a gap the floor passed (an
    uplink the gateway delivers more than the horizon after a newer one of the same
    device). Either lands in a closed window (unless the device's numbers ran against its
    clock by more than the horizon), so no KPI changes; but the second is *late*, not a
    duplicate, and is not routed to ``late-readings``, where the same reading arriving
    within the horizon would have been. The memory cannot tell the two apart without the
    gaps it folded (what the horizon saves), nor can the caller check lateness first
    without counting every redelivery after its window closed late (a gateway resending
    after a link drop: the common case). So ``duplicates`` includes such readings.

    **Counter resets.** A device whose counter starts again (a LoRaWAN rejoin sets fCnt to
    0; a node that rebooted without keeping its frame counter) repeats numbers it used
    before. A redelivered reading repeats its number *and its event time*, which is never
    newer than the newest this device has sent; a reading of a restarted counter carries a
    newer time. So a seen number with an event time past the device's newest is a reset:
    the device's memory starts again from it, and :meth:`add` says :attr:`Seen.RESET`. The
    numbering before the reset is kept (one generation), so a late redelivery of a reading
    from before the reset (its time no newer than the old numbering's newest) is still a
    duplicate.
    """

    def __init__(self, cap: int = 4096, horizon_us: int | None = None) -> None:
        self._cap = cap
        self._horizon = horizon_us
        self._order_limit = 2 * cap  # the arrival order is trimmed past this length
        # device -> [floor, seqs above it, newest event time (us) or None if unknown,
        #            the numbering before the last reset as (floor, seen above, newest) or
        #            None, (event time, seq) of the seqs above in arrival order]
        # The last may still list seqs since folded or raised past (skipped when met).
        self._state: dict[str, list[Any]] = {}

    def add(self, device_id: str, seq: int, event_us: int) -> Seen:
        """Record ``seq``: new, a duplicate (or stale), or the first of a restarted counter."""
        state = self._state.get(device_id)
        if state is None:
            self._state[device_id] = [seq, set(), event_us, None, deque()]
            return Seen.NEW
        floor, above, newest, before, order = state
        if seq <= floor or seq in above:
            if newest is not None and event_us > newest:
                self._state[device_id] = [
                    seq,
                    set(),
                    event_us,
                    (floor, frozenset(s for s in above if s > floor), newest),
                    deque(),
                ]
                return Seen.RESET
            return Seen.DUPLICATE
        if before is not None and event_us <= before[2] and (seq <= before[0] or seq in before[1]):
            return Seen.DUPLICATE  # a redelivery from before the counter restarted
        if newest is None or event_us > newest:
            state[2] = newest = event_us
        if seq == floor + 1 and not above:
            state[0] = seq
            return Seen.NEW
        above.add(seq)
        order.append((event_us, seq))
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        if self._horizon is not None:
            limit = newest - self._horizon
            while order and order[0][0] < limit:
                old = order.popleft()[1]
                if old in above:
                    above.discard(old)
                    if old > floor:
                        floor = old
        state[0] = floor
        if len(above) > self._cap:
            ordered = sorted(above)
            cut = ordered[len(ordered) // 2]
            state[0] = cut
            state[1] = {s for s in above if s > cut}
        if len(order) > self._order_limit:
            # entries the floor has passed (raised past by the cap, or a gap filled by a
            # late arrival) stay in the arrival order until the horizon reaches their time,
            # which never happens to a device whose clock stands still: drop them here
            kept = state[1]
            state[4] = deque(entry for entry in order if entry[1] in kept)
        return Seen.NEW

    def newest(self) -> int | None:
        """The newest event time (µs) of any device here, None when none is known."""
        times = [state[2] for state in self._state.values() if state[2] is not None]
        return max(times, default=None)

    def prune(self, before_us: int) -> None:
        """Forget the devices whose newest reading is older than ``before_us``: the caller
        makes sure any reading that old lands in a closed window (late, whatever it is).
        A device whose newest time is unknown (restored from before they were kept) stays."""
        gone = [d for d, st in self._state.items() if st[2] is not None and st[2] < before_us]
        for device in gone:
            del self._state[device]

    def remembered(self) -> int:
        """How many seqs are held one by one, over all devices (not the floors)."""
        return sum(len(state[1]) for state in self._state.values())

    def snapshot(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for device, (floor, above, newest, before, order) in self._state.items():
            kept = sorted((s, t) for t, s in order if s > floor and s in above)
            out[device] = [
                floor,
                [s for s, _ in kept],
                newest,
                None if before is None else [before[0], sorted(before[1]), before[2]],
                [t for _, t in kept],
            ]
        return out

    def restore(self, snap: dict[str, list[Any]]) -> None:
        # Older layouts: without newest times (from before resets were detected), a seen
        # number counts as a duplicate until the device's next new reading (safe side);
        # without the seqs' own times, each gets the device's newest, so it is folded one
        # horizon after that (or at the next new reading when that is unknown too).
        self._state = {}
        for device, v in snap.items():
            newest = v[2] if len(v) > 2 else None
            before = v[3] if len(v) > 3 else None
            if before is not None:
                before = (int(before[0]), frozenset(before[1]), before[2])
            seqs = [int(s) for s in v[1]]
            times = v[4] if len(v) > 4 else [0 if newest is None else newest] * len(seqs)
            order = deque(sorted(zip(times, seqs, strict=True)))
            self._state[device] = [int(v[0]), set(seqs), newest, before, order]


class DeviceWindows:
    """Per-device tumbling windows over one partition (or one offline replay)."""

    def __init__(
        self,
        size: timedelta,
        grace: timedelta,
        *,
        gateways: Collection[str] | None = None,
        withhold: bool = False,
        zones: Mapping[str, str] | None = None,
        retention: timedelta = timedelta(days=1),
        tz: tzinfo | None = None,
    ) -> None:
        """``tz``: the city's time zone, whose local clock the windows follow (None: UTC).

        ``zones``: the zone of each device the stream config declares with one; it wins
        over the zone on the readings, which each gateway stamps (with its own default for
        a device it does not list), so a device heard by two gateways stays in one zone.

        ``gateways`` and ``withhold`` are for offline replays, where a file may hold one
        gateway's readings after another's (an export grouped by gateway), while the live
        job reads each partition at its own pace and its zone stage waits for all of them.
        ``gateways``: the gateways of the whole input; :meth:`horizon` is None until each
        has been heard. ``withhold``: they are not known; :meth:`horizon` is always None
        (the caller closes zone windows at the end).

        ``retention``: a gateway (or a device behind one) that has sent nothing for this
        long by the wall clock is forgotten (:meth:`advance_wall`).
        """
        if size <= timedelta(0) or grace < timedelta(0):
            raise ValueError("window size must be positive and grace non-negative")
        self.size_us = size // timedelta(microseconds=1)
        self.grace_us = grace // timedelta(microseconds=1)
        # at least one window plus grace: what is forgotten must be late by then
        retention_us = retention // timedelta(microseconds=1)
        self.retention_us = max(retention_us, self.size_us + self.grace_us)
        self.grid = WindowGrid(self.size_us, tz)
        # gateway -> until when its readings keep the UTC grid: set by restoring a
        # checkpoint of windows on it (taken before windows followed the local clock), so
        # the windows it holds take the readings they would have taken then (see restore)
        self._utc_until: dict[str, int] = {}
        # (device, gateway, window start) -> the open window
        self._partials: dict[tuple[str, str, int], DevicePartial] = {}
        # gateway -> its seqs, remembered one by one for as long as a reading could still
        # land in an open window (see SeenSeqs)
        self._seen: dict[str, SeenSeqs] = {}
        # gateway -> newest event time, each capped at its reading's ingest time
        self._max_event: dict[str, int] = {}
        self._closed: dict[str, int] = {}  # gateway -> windows ending at/before are closed
        self._wall_horizon: int | None = None
        self._expected = None if gateways is None else frozenset(gateways)
        self._withhold = withhold
        self._zones = dict(zones or {})
        self.stats = WindowStats()

    def add(self, readings: Iterable[Reading]) -> list[Reading]:
        """Add readings; returns the late ones (for the caller to count and route)."""
        late: list[Reading] = []
        size = self.size_us
        grid = self.grid
        shift = grid.shift
        fast_from, fast_to = grid.fast_from, grid.fast_to
        utc_until = self._utc_until
        partials = self._partials
        for reading in readings:
            event_us = to_us(reading.event_time)
            gateway = reading.gateway_id
            seen = self._seen.get(gateway)
            if seen is None:
                seen = self._seen[gateway] = self.new_seen()
            verdict = seen.add(reading.device_id, reading.seq, event_us)
            if verdict is Seen.DUPLICATE:
                self.stats.duplicates += 1
                continue
            if verdict is Seen.RESET:
                self.stats.counter_resets += 1
            if utc_until and event_us < utc_until.get(gateway, 0):
                start = event_us - event_us % size
                end = start + size
            elif shift is not None and fast_from <= event_us < fast_to:
                start = event_us - (event_us + shift) % size
                end = start + size
            else:
                start, end = grid.window(event_us)
            closed = self._closed.get(gateway)
            if closed is None:
                # a gateway not heard before: its windows are closed as far as the horizon
                # this engine has handed downstream (the zone stage may have closed them)
                closed = self.horizon()
                if closed is not None:
                    self._closed[gateway] = closed
            if closed is not None and end <= closed:
                self.stats.late += 1
                late.append(reading)
                continue
            key = (reading.device_id, gateway, start)
            partial = partials.get(key)
            if partial is None:
                partial = partials[key] = {
                    "d": reading.device_id,
                    "g": gateway,
                    "z": self._zones.get(reading.device_id, reading.zone),
                    "ws": start,
                    "we": end,
                    "q": {},
                    "l": {},
                    "m": [],
                    "s": {},
                    "t": {},
                }
            quantity = reading.quantity.value
            values = partial["q"].get(quantity)
            if values is None:
                partial["q"][quantity] = [reading.value]
                partial["s"][quantity] = [reading.seq]
                partial["t"][quantity] = [event_us - start]
            else:
                values.append(reading.value)
                seqs = partial["s"].get(quantity)
                if seqs is not None:  # None: a window restored from before seqs were kept
                    seqs.append(reading.seq)
                    partial["t"][quantity].append(event_us - start)
            last = partial["l"].get(quantity)
            if last is None or event_us >= last[0]:
                partial["l"][quantity] = [event_us, reading.value]
            if reading.model_id and reading.model_id not in partial["m"]:
                partial["m"].append(reading.model_id)
            if event_us > self._max_event.get(gateway, -1):
                # the event-time watermark moves at once, so lateness does not depend on
                # how often close() is called (stream and replay agree). A reading moves it
                # at most to when its gateway received it: a device whose clock runs ahead
                # (the contract accepts up to an hour) must not make every other device
                # behind that gateway late.
                mark_us = min(event_us, to_us(reading.ingest_time))
                if mark_us > self._max_event.get(gateway, -1):
                    self._max_event[gateway] = mark_us
                    horizon = mark_us - self.grace_us
                    if closed is None or horizon > closed:
                        self._closed[gateway] = horizon
            self.stats.added += 1
        return late

    def advance_wall(self, now: datetime) -> bool:
        """Let the wall clock ``now`` (the partition is caught up as of then) close the
        windows whose end + grace it has passed, at the next :meth:`close`; True when that
        moved the watermark.

        The wall horizon moves in whole windows (it only ever decides which windows are
        closed, and their ends are window boundaries), so it changes once a window,
        not at every call. Unlike event time, a replay cannot repeat it: the caller makes
        the state checkpointed after a True durable before anything acts on it (the closed
        windows, the watermark, a reading found late), or a crash would let a replay put a
        later reading into a window already sent downstream, where it would be skipped as
        a replayed window and lost. The windows stay in the state until :meth:`close`
        takes them, so a checkpoint taken in between holds them and closes them once
        restored.

        It also forgets what it keeps per gateway (watermark, closed windows, the
        deduplication memory) for a gateway that has sent nothing for ``retention`` by the
        wall clock and has no window open, and the deduplication memory of a device that
        has not, behind a gateway that still sends: a gateway taken out of service stayed
        in memory and in every checkpoint for good. Any reading of it that comes after is
        older than ``wall`` and so late, counted and routed as such: no reading counts
        twice. (A redelivery of one is then counted late, not duplicate.) A gateway
        forgotten and heard again starts where a new one does (:meth:`horizon`, which the
        wall has passed). This is decided with the wall horizon, so the checkpoint of this
        close holds it; ``kpi eval`` (no wall clock) forgets nothing.
        """
        wall = to_us(now) - self.grace_us
        if self._utc_until and wall < max(self._utc_until.values()):
            # windows restored on the UTC grid end on its boundaries
            wall = max(self.grid.start(wall), wall - wall % self.size_us)
        else:
            wall = self.grid.start(wall)
        if self._wall_horizon is not None and wall <= self._wall_horizon:
            return False
        self._wall_horizon = wall
        self._prune(wall - self.retention_us)
        # every gateway's windows are closed up to the wall from now on, in the checkpoint
        # of this move too: restored, a replayed reading behind the wall is late, not put
        # in a window the zone stage has closed (it would drop it there as "replayed").
        # Including a gateway whose every reading so far was late: it has no watermark,
        # only the horizon it was first heard at.
        for gateway, mark in self._closed.items():
            if mark < wall:
                self._closed[gateway] = wall
        return True

    def _prune(self, before_us: int) -> None:
        """Forget gateways and devices with nothing newer than ``before_us`` (see
        :meth:`advance_wall`)."""
        if self._expected is not None or self._withhold:
            return  # an offline replay that waits for its gateways: keep them all
        gateways = set(self._seen) | set(self._closed) | set(self._max_event)
        busy: set[str] | None = None
        for gateway in gateways:
            seen = self._seen.get(gateway)
            newest = max(
                self._max_event.get(gateway, -1),
                -1 if seen is None else (seen.newest() or -1),
            )
            if newest >= before_us:
                if seen is not None:
                    seen.prune(before_us)
                continue
            if busy is None:
                busy = {partial["g"] for partial in self._partials.values()}
            if gateway in busy:
                continue  # a window still to close: the next move of the wall forgets it
            self._seen.pop(gateway, None)
            self._closed.pop(gateway, None)
            self._max_event.pop(gateway, None)
            self._utc_until.pop(gateway, None)

    def close(self, now: datetime | None = None) -> list[DevicePartial]:
        """Close every window whose end + grace the watermark has passed.

        ``now`` is the wall clock, given only when the partition is caught up; None in
        replays and during catch-up, where event time alone decides. (The Faust app calls
        :meth:`advance_wall` itself, to checkpoint what it decides first.)
        """
        if now is not None:
            self.advance_wall(now)
        wall_h = self._wall_horizon
        for gateway, newest in self._max_event.items():
            horizon = newest - self.grace_us
            if wall_h is not None and wall_h > horizon:
                horizon = wall_h
            if horizon > self._closed.get(gateway, horizon - 1):
                self._closed[gateway] = horizon
        ready = [
            key
            for key, partial in self._partials.items()
            if partial["we"] <= self._closed.get(partial["g"], -1)
        ]
        ready.sort(key=lambda k: (k[2], k[0], k[1]))
        closed = [self._partials.pop(key) for key in ready]
        if self._utc_until:
            self._utc_until = {
                g: until for g, until in self._utc_until.items() if until > self._closed.get(g, -1)
            }
        self.stats.closed += len(closed)
        return closed

    def flush(self) -> list[DevicePartial]:
        """Close everything (end of an offline replay)."""
        closed = sorted(self._partials.values(), key=lambda p: (p["ws"], p["d"], p["g"]))
        self._partials.clear()
        for partial in closed:
            gateway = partial["g"]
            self._closed[gateway] = max(self._closed.get(gateway, 0), partial["we"])
        self.stats.closed += len(closed)
        return closed

    def horizon(self) -> int | None:
        """Every window ending at or before this has been closed and handed out, and any
        later reading for one will be late, whatever its gateway (one not heard yet
        starts there): the watermark this stage passes downstream. It never goes back."""
        if self._withhold:
            return None
        if self._expected is not None:
            if not self._expected <= self._closed.keys():
                return self._wall_horizon
            self._expected = None  # every gateway of the input has been heard
        if not self._closed:
            return self._wall_horizon
        low = min(self._closed.values())
        if self._wall_horizon is not None and self._wall_horizon > low:
            low = self._wall_horizon
        return low

    @property
    def open_windows(self) -> int:
        return len(self._partials)

    def new_seen(self) -> SeenSeqs:
        """A gateway's deduplication memory: one window plus grace of seqs one by one."""
        return SeenSeqs(horizon_us=self.size_us + self.grace_us)

    def remembered(self) -> int:
        """Seqs held one by one, over all gateways and devices (see SeenSeqs)."""
        return sum(seen.remembered() for seen in self._seen.values())

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state, checkpointed to a changelogged table by the Faust app."""
        return {
            "partials": list(self._partials.values()),
            "seen": {gateway: seen.snapshot() for gateway, seen in self._seen.items()},
            "max_event": self._max_event,
            "closed": self._closed,
            "wall": self._wall_horizon,
            "stats": [
                self.stats.added,
                self.stats.duplicates,
                self.stats.late,
                self.stats.counter_resets,
            ],
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self._partials = {}
        self._utc_until = {}
        for p in snap["partials"]:
            p.setdefault("s", {})  # checkpointed before seqs were kept: none for "q"'s values
            p.setdefault("t", {})
            self._partials[(p["d"], p["g"], p["ws"])] = p
            if not self.grid.on_grid(p["ws"], p["we"]):
                # a window on the UTC grid, checkpointed before windows followed the local
                # clock (a zone whose offset is not whole hours): it closes as it is, and
                # its gateway's readings keep the UTC grid until it ends, so a replay of
                # the records after the checkpoint rebuilds the windows the worker had
                # built from them (the zone stage may have counted them already)
                gateway = p["g"]
                self._utc_until[gateway] = max(self._utc_until.get(gateway, 0), p["we"])
        seen = snap["seen"]
        if any(isinstance(v, list) for v in seen.values()):
            # the layout before memories per gateway: {device: state}. Every gateway this
            # partition has heard gets a copy, so a redelivery stays a duplicate.
            gateways = set(snap["closed"]) | set(snap["max_event"])
            gateways.update(p["g"] for p in snap["partials"])
            seen = {gateway: seen for gateway in gateways}
        self._seen = {}
        for gateway, per_device in seen.items():
            self._seen[gateway] = self.new_seen()
            self._seen[gateway].restore(per_device)
        self._max_event = dict(snap["max_event"])
        self._closed = dict(snap["closed"])
        self._wall_horizon = snap["wall"]
        stats = snap["stats"]
        self.stats.added, self.stats.duplicates, self.stats.late = stats[:3]
        self.stats.counter_resets = stats[3] if len(stats) > 3 else 0
