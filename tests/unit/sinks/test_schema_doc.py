"""sinks/SCHEMA.md: the commands it gives work against the buckets the sink really writes."""

from __future__ import annotations

import re
from pathlib import Path

from sinks.config import load_config

SCHEMA = Path(__file__).resolve().parents[3] / "sinks" / "SCHEMA.md"


def test_influx_commands_name_real_buckets() -> None:
    """`raw` and `kpi` are the config's keys; the influx CLI needs the buckets' names."""
    names = {spec.name for spec in load_config(None).influx.buckets.values()}
    buckets = re.findall(r"--bucket (\S+)", SCHEMA.read_text())
    assert buckets
    assert set(buckets) <= names, f"{set(buckets) - names} are not bucket names ({names})"
