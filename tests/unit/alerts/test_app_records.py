"""What the alert engine's agents feed to the engine and send to dead-letter, per record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from climastream.contract import AlertState, BatchSplit, KpiValue
from stream.alerts.app import read_record
from stream.alerts.engine import AlertEngine
from stream.alerts.rules import rules_from_mapping

HEAT = {"id": "heat", "kind": "threshold", "source": "reading", "quantity": "temperature",
        "set": 40, "clear": 35, "severity": "critical"}  # fmt: skip


def _reading(seq: int, value: float, at: datetime, device: str = "th-1") -> dict[str, Any]:
    return {"device_id": device, "gateway_id": "gw1", "seq": seq, "quantity": "temperature",
            "value": value, "unit": "Cel", "event_time": at.isoformat(),
            "ingest_time": at.isoformat(), "zone": "centre"}  # fmt: skip


def test_a_reading_that_fails_alone_does_not_hide_its_batch_from_the_rules() -> None:
    """41 degC in a batch with one reading from a device clock 2 h ahead: the whole
    record used to go to dead-letter, and the heat alert never fired."""
    now = datetime.now(UTC)
    ahead = _reading(9, 20.0, now + timedelta(hours=2), device="fast-clock")
    readings = [_reading(i, v, now - timedelta(seconds=4 - i)) for i, v in enumerate([30, 41])]
    raw = orjson.dumps({"gateway_id": "gw1", "readings": [readings[0], ahead, readings[1]]})
    record, letters = read_record("readings", None, raw, 3, 1207)
    assert isinstance(record, BatchSplit)
    assert [r.seq for r in record.readings] == [0, 1]
    ((value, headers, count),) = letters
    assert orjson.loads(value)["readings"] == [ahead]
    assert headers["reason"] == b"partial-batch"
    assert headers["source_topic"] == b"readings"
    # the KPI worker and the sink dead-letter the same reading: say whose this is
    assert headers["consumer"] == b"alerts"
    assert (headers["source_partition"], headers["source_offset"]) == (b"3", b"1207")
    assert b"readings.1 (device fast-clock): " in headers["error"]
    assert count == 1
    eng = AlertEngine(rules_from_mapping({"rules": [HEAT]}), {}, {}, clock=lambda: now)
    assert [a.state for a in eng.on_batch(record)] == [AlertState.FIRING]


def test_a_bad_envelope_or_another_topic_is_dead_lettered_whole() -> None:
    raw = b'{"gateway_id": "bad id", "readings": [1]}'
    record, letters = read_record("readings", None, raw)
    assert record is None
    ((value, headers, count),) = letters
    assert (value, headers["reason"], count) == (raw, b"contract", 0)
    assert headers["consumer"] == b"alerts"
    assert b"gateway_id" in headers["error"]
    record, letters = read_record("kpi", KpiValue, b'{"kpi_id": "x"}')
    assert record is None
    assert letters[0][1]["reason"] == b"contract"
