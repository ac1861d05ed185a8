"""`climastream decode` end to end through the real CLI entry point."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from climastream.cli import main
from firmware_bridge.cli import _HEX, read_payload

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


def test_bad_payload_text_is_bad_input_and_missing_layout_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit 1 for input that is not a payload (like a bad frame), 2 for usage errors."""
    code, _, err = run(capsys, "cayenne", "not-hex-or-b64!", "--format", "hex")
    assert code == 1
    assert "not valid hex" in err
    code, _, err = run(capsys, "sds011", "AAC0D")
    assert code == 1
    assert "odd number of digits (5)" in err
    binary = tmp_path / "frame.bin"
    binary.write_bytes(b"AA\xff")
    code, _, err = run(capsys, "sds011", f"@{binary}")
    assert code == 1
    assert "not UTF-8 text at byte 2" in err
    code, _, err = run(capsys, "layout", "0102")
    assert code == 2
    assert "needs a layout" in err


def test_hex_as_datasheets_and_c_arrays_write_it(capsys: pytest.CaptureFixture[str]) -> None:
    frame = "0xAA, 0xC0, 0xD2, 0x04, 0x2E, 0x16, 0x12, 0xAB, 0xD7, 0xAB"  # SDS011 datasheet form
    code, report, _ = run(capsys, "sds011", frame)
    assert code == 0
    assert [m["value"] for m in report["measurements"]] == [123.4, 567.8]  # type: ignore[index, union-attr]


def test_device_id_overrides_the_dev_eui_and_an_omitted_snr_is_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Protobuf JSON leaves out zero values: an rxInfo entry without "snr" had 0 dB."""
    uplink = {
        "deviceInfo": {"devEui": "0011223344556677"},
        "fCnt": 3,
        "data": base64.b64encode(bytes.fromhex("016700E1")).decode(),  # ch1 22.5 Cel
        "rxInfo": [{"rssi": -80}],
    }
    code, report, _ = run(capsys, "chirpstack", json.dumps(uplink), "--device-id", "my-node")
    assert code == 0
    temperature = report["measurements"][0]  # type: ignore[index]
    assert temperature["device_id"] == "my-node"
    assert (temperature["metadata"]["rssi"], temperature["metadata"]["snr"]) == (-80.0, 0.0)


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


#: the hex pattern before it was rewritten: same language, exponential backtracking
_OLD_HEX = re.compile(r"^(?:(?:0[xX])?[0-9A-Fa-f]+[\s:,-]*)+$")


def test_long_base64_that_is_almost_hex_is_read_as_base64() -> None:
    # The old pattern backtracked 4x per 2 characters here: 64 A's would take centuries.
    text = "A" * 64 + "/w=="
    assert read_payload(text, "auto", "binary") == base64.b64decode(text)
    assert _HEX.match("A" * 64 + "==") is None


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0aFxX :,-g\n\u00a0", max_size=14))
def test_hex_pattern_accepts_what_the_old_one_did(text: str) -> None:
    assert bool(_HEX.match(text)) == bool(_OLD_HEX.match(text))
