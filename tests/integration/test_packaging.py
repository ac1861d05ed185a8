"""The edge extra resolves, against the real package index, without cloud dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_pip_resolves_edge_extra_without_faust_or_influxdb(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{ROOT}[edge]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"aiokafka", "onnxruntime", "pyserial", "aiomqtt", "pydantic"} <= names
    assert not {n for n in names if "faust" in n or "influxdb" in n or n == "mode-streaming"}
