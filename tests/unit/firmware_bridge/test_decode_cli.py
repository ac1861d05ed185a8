"""`climastream decode` end to end through the real CLI entry point."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from climastream.cli import main

ROOT = Path(__file__).resolve().parents[3]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object], str]:
    code = main(["decode", *argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {}), captured.err


def test_cayenne_hex_with_spaces(capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = run(capsys, "cayenne", "03 67 01 10 05 67 00 FF")
    assert code == 0
    assert [(m["channel"], m["value"], m["unit"]) for m in report["measurements"]] == [  # type: ignore[index, union-attr]
        (3, 27.2, "Cel"),
        (5, 25.5, "Cel"),
    ]


def test_base64_is_detected(capsys: pytest.CaptureFixture[str]) -> None:
    payload = base64.b64encode(bytes.fromhex("0167FFD7")).decode()  # "AWf/1w==", not hex
    code, report, _ = run(capsys, "cayenne", payload)
    assert code == 0
    assert report["measurements"][0]["value"] == -4.1  # type: ignore[index]


def test_bad_checksum_exits_nonzero_naming_reason_and_byte(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, report, err = run(capsys, "sds011", "AAC0D400F401A160CBAB")
    assert code == 1
    assert report["measurements"] == []
    assert "bad_checksum at byte 8" in err


def test_error_offset_counts_from_start_of_input(capsys: pytest.CaptureFixture[str]) -> None:
    good = "AAC0D400F401A160CAAB"
    code, report, err = run(capsys, "sds011", good + "AAC0D400F401A160CBAB")
    assert code == 1
    assert len(report["measurements"]) == 2  # type: ignore[arg-type]
    assert "bad_checksum at byte 18" in err


def test_chirpstack_json_from_file_and_layout(capsys: pytest.CaptureFixture[str]) -> None:
    case = ROOT / "testdata/chirpstack/inner_layout_lht65/payload.json"
    code, report, _ = run(
        capsys, "chirpstack", f"@{case}", "--inner", "layout", "--layout", "dragino-lht65"
    )
    assert code == 0
    temps = [m for m in report["measurements"] if m["quantity"] == "temperature"]  # type: ignore[union-attr]
    assert [t["value"] for t in temps] == [28.29, 27.81]
    assert all(t["seq"] == 10 and t["metadata"]["rssi"] == -36 for t in temps)


def test_bad_hex_and_missing_layout_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "cayenne", "not-hex-or-b64!", "--format", "hex")[0] == 2
    code, _, err = run(capsys, "layout", "0102")
    assert code == 2
    assert "needs a layout" in err


def test_help_lists_every_codec() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "climastream.cli", "decode", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"},
    ).stdout
    for codec in (
        "sds011",
        "pms5003",
        "textline",
        "framed",
        "cayenne",
        "layout",
        "chirpstack",
        "tts",
        "json",
        "senml",
        "annexb",
    ):
        assert f"  {codec} " in out
