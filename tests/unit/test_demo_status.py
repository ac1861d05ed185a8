"""The demo's progress line shows this run's gateway, never the last run's."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from climastream import demo as demo_module
from climastream.demo import Demo


def test_a_new_run_does_not_show_the_last_runs_gateway_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "edge-status.json").write_text(
        json.dumps({"readings_sent_total": 3121, "time": "2026-11-24T07:05:00+00:00"})
    )
    stack: Any = types.SimpleNamespace(
        env=dict,
        config=types.SimpleNamespace(kafka_bootstrap="127.0.0.1:1", mqtt_port=1),
    )
    spawned: list[str] = []
    monkeypatch.setattr(Demo, "_spawn", lambda self, name, args: spawned.append(name))
    demo = Demo(stack, demo_module.ROOT / "deploy/local/demo-gateway.yaml", tmp_path)
    demo.start("20261124T070625")
    assert "edge" in spawned
    assert demo.edge_status() == {}  # until the new gateway writes its first status
