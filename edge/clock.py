"""Is the gateway's wall clock synchronized? A Raspberry Pi has no real-time clock.

It boots with fake-hwclock's time (the last clean shutdown, or an hourly save before a
power cut) and NTP (systemd-timesyncd, chrony) steps it, by hours or days, only once the
uplink is up; a gateway offline for days runs that long on a wrong clock. Readings the
gateway stamps meanwhile carry a wrong time, so the agent flags them ``clock_unsynced``.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path
from typing import Any

#: the kernel's "no estimate" maximum error (NTP_PHASE_LIMIT, µs); below it the clock is
#: synchronized. The same test as ``timedatectl``'s "System clock synchronized" (systemd's
#: ``ntp_synced()``), so both agree; chrony and timesyncd both keep it up to date.
_MAXERROR_UNSYNCED_US = 16_000_000
#: systemd-timesyncd creates this at its first synchronization of this boot
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


class _Timex(ctypes.Structure):
    """The head of the kernel's ``struct timex`` (``long`` fields: right on 32- and 64-bit
    ARM through glibc's ``adjtimex`` symbol); the tail is room for the rest."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_byte * 512),
    )


@functools.cache
def _adjtimex() -> Any:
    """libc's ``adjtimex`` (the process's own symbols: no library search), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None


def _kernel_maxerror_us() -> int | None:
    """The kernel's maximum clock error (``adjtimex`` with no modes: read-only), or None."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    timex = _Timex()
    if adjtimex(ctypes.byref(timex)) < 0:
        return None
    return int(timex.maxerror)


def system_clock_synchronized() -> bool | None:
    """True when the wall clock is synchronized, False when it is not, None if unknown.

    The kernel says (as for ``timedatectl``); where it cannot be asked, timesyncd's flag
    file counts as synchronized and its absence as unknown.
    """
    maxerror = _kernel_maxerror_us()
    if maxerror is not None:
        return maxerror < _MAXERROR_UNSYNCED_US
    return True if TIMESYNCD_FLAG.exists() else None
