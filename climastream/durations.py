"""Durations in config files: ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ISO 8601 or seconds.

One definition for every config (gateway, stream, alert rules, notifier), so the same text
means the same time everywhere.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """``"15m"`` -> ``timedelta(minutes=15)``; other forms are left to pydantic."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    return value


#: a non-negative duration in any of the forms above
Duration = Annotated[timedelta, BeforeValidator(parse_duration), Field(ge=timedelta(0))]
