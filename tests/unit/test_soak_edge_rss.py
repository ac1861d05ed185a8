"""``make bench-edge-rss`` speeds up the demo's gateway and devices by ``--speed``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from edge.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _soak() -> object:
    spec = importlib.util.spec_from_file_location(
        "soak_edge_rss", ROOT / "benchmarks/soak_edge_rss.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_soak_runs_the_demo_gateway_and_devices_speed_times_faster_on_its_own_topics(
    tmp_path: Path,
) -> None:
    gateway_file, fleet_file = _soak().configs(tmp_path, "bench-edge-rss-x", 10.0, 41883)  # type: ignore[attr-defined]
    demo = yaml.safe_load((ROOT / "deploy/local/demo-gateway.yaml").read_text())
    gateway = load_config(gateway_file)  # the agent would accept it
    assert gateway.kafka.readings_topic == "bench-edge-rss-x"
    assert gateway.kafka.status_topic == "bench-edge-rss-x-status"
    assert gateway.metrics.listen is None
    assert {m.id for m in gateway.models} == {m["id"] for m in demo["models"]}
    assert all(m.path.is_absolute() and m.path.exists() for m in gateway.models)
    cadences = [s["cadence_s"] for s in demo["sources"] if s["kind"] == "simulated"]
    assert cadences
    assert [s.cadence_s for s in gateway.sources if s.kind == "simulated"] == [  # type: ignore[union-attr]
        c / 10 for c in cadences
    ]
    demo_fleet = yaml.safe_load((ROOT / "deploy/local/demo-fleet.yaml").read_text())
    fleet = yaml.safe_load(fleet_file.read_text())
    assert fleet["mqtt"]["port"] == 41883
    for group in ("serial", "lorawan", "mqtt_json"):
        assert [d["period_s"] for d in fleet[group]] == [
            d.get("period_s", 1.0) / 10 for d in demo_fleet[group]
        ]
