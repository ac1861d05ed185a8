"""Every golden vector under testdata/<device>/<case>/ through the codec registry.

Expected values were computed by hand from the datasheets and specs (see each case's
source in firmware_bridge docs); this test only compares.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.codecs import CodecOptions, decode_payload
from firmware_bridge.lorawan.layout import builtin_layout
from firmware_bridge.model import DecodeError
from firmware_bridge.mqtt.generic_json import mapping_from_dict

TESTDATA = Path(__file__).resolve().parents[3] / "testdata"
CASES = sorted(p.parent for p in TESTDATA.glob("*/*/expected.json"))


def load_input(case: Path) -> bytes:
    if (case / "input.hex").exists():
        return bytes.fromhex((case / "input.hex").read_text())
    if (case / "input.txt").exists():
        return (case / "input.txt").read_bytes()
    return (case / "payload.json").read_bytes()


def load_options(meta: dict[str, Any]) -> CodecOptions:
    raw = dict(meta.get("options", {}))
    if "layout" in raw:
        raw["layout"] = builtin_layout(raw["layout"])
    if "mapping" in raw:
        raw["mapping"] = mapping_from_dict(raw["mapping"])
    if "now" in raw:
        fixed = datetime.fromisoformat(raw.pop("now").replace("Z", "+00:00"))
        raw["now"] = lambda: fixed
    return CodecOptions(**raw)


def run_case(
    case: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[DecodeError], list[str]]:
    expected = json.loads((case / "expected.json").read_text())
    meta = json.loads((case / "meta.json").read_text()) if (case / "meta.json").exists() else {}
    results = decode_payload(expected["codec"], load_input(case), load_options(meta))
    measurements = [
        m.to_json() for r in results if not isinstance(r, DecodeError) for m in r.measurements
    ]
    errors = [r for r in results if isinstance(r, DecodeError)]
    unmapped = [u for r in results if not isinstance(r, DecodeError) for u in r.unmapped]
    return expected, measurements, errors, unmapped


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_golden_vector(case: Path) -> None:
    expected, measurements, errors, unmapped = run_case(case)
    assert [(e.reason, e.offset) for e in errors] == [
        (e["reason"], e.get("offset", errors[i].offset if i < len(errors) else None))
        for i, e in enumerate(expected.get("errors", []))
    ]
    assert unmapped == expected.get("unmapped", [])
    assert len(measurements) == len(expected["measurements"]), measurements
    for got, want in zip(measurements, expected["measurements"], strict=True):
        assert math.isclose(got["value"], want["value"], rel_tol=1e-9, abs_tol=1e-9), (got, want)
        for key in ("device_id", "quantity", "unit"):
            assert got[key] == want[key], (key, got, want)
        for key in ("seq", "time", "channel", "gateway_time"):
            assert got.get(key) == want.get(key), (key, got, want)
        for key, value in want.get("metadata", {}).items():
            assert got.get("metadata", {}).get(key) == value, (key, got, want)


def test_every_device_has_vectors() -> None:
    devices = {c.parent.name for c in CASES}
    assert {
        "sds011",
        "pms5003",
        "textline",
        "framed",
        "cayenne",
        "dragino-lht65",
        "chirpstack",
        "tts",
        "senml",
        "json",
        "annexb",
    } <= devices


def test_every_error_message_names_the_byte() -> None:
    for case in CASES:
        _, _, errors, _ = run_case(case)
        for error in errors:
            if error.offset is not None:
                assert f"at byte {error.offset}" in str(error)
            assert error.reason in str(error)
