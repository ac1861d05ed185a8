"""``climastream edge check`` validates, loads models, prints decoded readings, sends nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "climastream.cli",
            "edge",
            "check",
            "--config",
            str(config),
            "--count",
            "5",
            "--timeout",
            "10",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def _demo_gateway_without_devices(tmp_path: Path) -> Path:
    """The demo gateway with only its simulated source: the serial and MQTT sources need
    devices and a broker, which unit tests do not have."""
    config = yaml.safe_load((ROOT / "deploy/local/demo-gateway.yaml").read_text())
    config["sources"] = [s for s in config["sources"] if s["kind"] == "simulated"]
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_prints_readings_of_the_demo_gateway(tmp_path: Path) -> None:
    out = _check(_demo_gateway_without_devices(tmp_path))
    assert out.returncode == 0, out.stderr
    readings = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(readings) >= 5
    assert {r["gateway_id"] for r in readings} == {"gw-demo-1"}
    assert "model sensor-anomaly (sensor-anomaly:" in out.stderr
    assert "source street-sensors: up" in out.stderr


def test_check_fails_naming_a_source_that_cannot_be_opened(tmp_path: Path) -> None:
    config = yaml.safe_load(_demo_gateway_without_devices(tmp_path).read_text())
    config["sources"].append(
        {
            "kind": "serial",
            "name": "unplugged",
            "port": str(tmp_path / "no-tty"),
            "codec": "sds011",
            "device_id": "sds-1",
        }
    )
    path = tmp_path / "gw-unplugged.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _check(path)
    assert out.returncode != 0
    assert "unplugged" in out.stderr
    assert "source unplugged: connecting, 0 readings (" in out.stderr
    assert "No such file or directory" in out.stderr  # the reason, not only the state
    # --count bounds what is printed, even though a read can decode more
    assert len(out.stdout.splitlines()) == 5


def test_a_source_that_cannot_be_built_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    config = yaml.safe_load(_demo_gateway_without_devices(tmp_path).read_text())
    config["sources"][0]["devices"][0]["quantities"] = ["wind_speed"]
    config["buffer"] = None  # an empty section, overridden by check: no TypeError either
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _check(path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "the simulator cannot produce ['wind_speed']" in out.stderr


def test_check_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "gw.yaml"
    bad.write_text("gateway_id: gw1\nbatch_max_readings: 0\nsources: []\n")
    out = _check(bad)
    assert out.returncode == 2
    assert "batch_max_readings: Input should be greater than or equal to 1" in out.stderr
    assert "sources: " in out.stderr
