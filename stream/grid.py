"""Where tumbling windows start: on the city's local clock, in integer µs since the epoch.

A window of a size that divides one hour starts where the local clock shows a multiple of
it: in Kolkata (+05:30) an hour window runs 11:00-12:00 local (05:30-06:30 UTC), in
Kathmandu (+05:45) a 30 min window 11:00-11:30 or 11:30-12:00 local. In a zone whose
offset is a whole number of hours (Europe/Brussels, UTC) that is the UTC grid, the same
windows as before local alignment. A longer window (an ``eaqi_period`` of 2 h or 1 d)
starts at a local :00 but keeps the UTC hour phase, so it too is unchanged in whole-hour
zones.

The grid is shifted by the part of the UTC offset below the window size (the "shift").
It is the same all year in nearly every zone (a DST step of a whole hour does not change
it: Adelaide, St John's), so the start of a reading's window is one subtraction. In a zone
where it changes (Australia/Lord_Howe: +10:30, +11 in summer, so for hour windows the
shift is 30 min or 0) the windows are cut at the instant of the change: the window running
when it happens ends there, and the next one starts there and ends at the next boundary of
the new grid. Windows still tile time (each instant is in exactly one), they are at most
one size long, and they always end.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import lru_cache

US = 1_000_000
_HOUR_US = 3600 * US
_DAY_S = 86_400
#: the shift is checked for being constant over these years (daily samples); outside them,
#: or if it is not constant, each window is computed from the zone's offset at that time
_FAST_FROM = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp())
_FAST_TO = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())


def _shift_at(tz: tzinfo, size_us: int, seconds: int) -> int:
    offset = datetime.fromtimestamp(seconds, tz).utcoffset()
    offset_us = 0 if offset is None else round(offset.total_seconds() * US)
    return offset_us % _HOUR_US % size_us


@lru_cache(maxsize=64)
def _constant_shift(tz: tzinfo, size_us: int) -> int | None:
    """The shift if it is the same at every daily sample of 1990-2100, else None."""
    shifts = {_shift_at(tz, size_us, s) for s in range(_FAST_FROM, _FAST_TO, _DAY_S)}
    return shifts.pop() if len(shifts) == 1 else None


class WindowGrid:
    """The tumbling windows of ``size_us`` on the local clock of ``tz`` (None: UTC)."""

    __slots__ = ("_last", "fast_from", "fast_to", "shift", "size_us", "tz")

    def __init__(self, size_us: int, tz: tzinfo | None = None) -> None:
        if size_us <= 0:
            raise ValueError("window size must be positive")
        self.size_us = size_us
        self.tz = tz
        shift = 0 if tz is None or tz is UTC else _constant_shift(tz, size_us)
        #: the grid's shift where it is constant; None: computed per window
        self.shift = shift
        if tz is None or tz is UTC:
            self.fast_from, self.fast_to = -(1 << 62), 1 << 62
        else:
            self.fast_from, self.fast_to = _FAST_FROM * US, _FAST_TO * US
        self._last = (0, 0)  # the last window computed the slow way

    def window(self, t: int) -> tuple[int, int]:
        """``(start, end)`` of the window holding ``t``."""
        shift = self.shift
        if shift is not None and self.fast_from <= t < self.fast_to:
            start = t - (t + shift) % self.size_us
            return start, start + self.size_us
        last = self._last
        if last[0] <= t < last[1]:
            return last
        found = self._last = self._slow(t)
        return found

    def start(self, t: int) -> int:
        """Start of the window holding ``t`` (``t`` itself when it is a boundary)."""
        return self.window(t)[0]

    def end(self, t: int) -> int:
        """The first boundary after ``t``: the end of the window holding it."""
        return self.window(t)[1]

    def on_grid(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` is one of this grid's windows."""
        return self.window(start) == (start, end)

    # ------------------------------------------------------------------ changing shift

    def _shift(self, t: int) -> int:
        assert self.tz is not None
        return _shift_at(self.tz, self.size_us, t // US)

    def _change(self, lo: int, hi: int) -> int:
        """The first whole second in ``(lo, hi]`` with ``hi``'s shift, given that ``lo``
        has another (UTC offsets change on whole seconds)."""
        target = self._shift(hi)
        lo_s, hi_s = lo // US, -(-hi // US)
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            if self._shift(mid * US) == target:
                hi_s = mid
            else:
                lo_s = mid
        return hi_s * US

    def _slow(self, t: int) -> tuple[int, int]:
        size = self.size_us
        shift = self._shift(t)
        start = t - (t + shift) % size
        if self._shift(start) != shift:  # the shift changed within this window, before t
            start = self._change(start, t)
        end = start - (start + shift) % size + size
        if self._shift(end - 1) != shift:  # it changes again before the window would end
            end = self._change(t, end - 1)
        return start, end
