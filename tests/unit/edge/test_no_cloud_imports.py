"""A Pi installs only the edge extra: no edge module may import faust or influxdb_client."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import edge

ROOT = Path(__file__).resolve().parents[3]


def test_edge_modules_import_without_faust_or_influxdb() -> None:
    modules = sorted(
        m.name
        for m in pkgutil.walk_packages(edge.__path__, "edge.")
        if "build_models" not in m.name
    )
    assert "edge.agent" in modules
    assert "edge.sources.mqtt_source" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "import edge.cli, climastream.cli\n"
        "climastream.cli.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'influxdb_client'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == ""
