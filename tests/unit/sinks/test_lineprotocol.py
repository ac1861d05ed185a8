"""Line protocol: golden lines written by hand from the spec, and injection properties.

The property tests parse the writer's output with an independent parser written here from
the InfluxDB line-protocol reference (not with sinks.lineprotocol), and require that the
parsed point has exactly the measurement, tags and fields that were put in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from climastream.contract import (
    SAFE_ID_PATTERN,
    Alert,
    AlertState,
    ContractError,
    GatewayStatus,
    KpiValue,
    Quantity,
    Reading,
    ReadingBatch,
    decode,
    encode,
)
from sinks.influx import lines_for, render_record
from sinks.lineprotocol import (
    LineProtocolError,
    Precision,
    alert_line,
    escape_key,
    gateway_status_line,
    kpi_line,
    line,
    reading_line,
    timestamp,
)

T0 = datetime(2026, 7, 1, 23, 0, 0, 123456, tzinfo=UTC)
SAFE_ID = re.compile(SAFE_ID_PATTERN)
T0_NS = 1782946800123456000

# --------------------------------------------------------------------------- a parser


def _unescape(text: str, specials: str) -> str:
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in specials + "\\":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _split(text: str, sep: str) -> list[str]:
    """Split on unescaped ``sep`` outside double quotes."""
    parts, cur, i, quoted = [], [], 0, False
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_line(text: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """An independent line-protocol parser (InfluxDB 2.x reference)."""
    assert "\n" not in text, "a point must be exactly one line"
    assert "\r" not in text, "a point must be exactly one line"
    sections = _split(text, " ")
    assert len(sections) == 3, f"expected 'series fields time', got {sections!r}"
    series, field_text, time_text = sections
    key_parts = _split(series, ",")
    measurement = _unescape(key_parts[0], ", ")
    tags = {}
    for part in key_parts[1:]:
        kv = _split(part, "=")
        assert len(kv) == 2, f"bad tag {part!r}"
        key = _unescape(kv[0], ",= ")
        assert key not in tags, f"duplicate tag {key!r}"
        tags[key] = _unescape(kv[1], ",= ")
    fields: dict[str, object] = {}
    for part in _split(field_text, ","):
        kv = _split(part, "=")
        assert len(kv) == 2, f"bad field {part!r}"
        key, raw = _unescape(kv[0], ",= "), kv[1]
        assert key not in fields, f"duplicate field {key!r}"
        if raw.startswith('"'):
            assert raw.endswith('"')
            assert len(raw) >= 2
            fields[key] = _unescape(raw[1:-1], '"')
        elif raw.endswith("i"):
            fields[key] = int(raw[:-1])
        elif raw in ("true", "false"):
            fields[key] = raw == "true"
        else:
            fields[key] = float(raw)
    return measurement, tags, fields, int(time_text)


# --------------------------------------------------------------------------- golden lines


def _reading(**kw: object) -> Reading:
    values: dict[str, object] = {
        "device_id": "dev-1",
        "gateway_id": "gw.1",
        "seq": 42,
        "quantity": Quantity.TEMPERATURE,
        "value": 21.5,
        "unit": "Cel",
        "event_time": T0,
        "ingest_time": T0,
        "zone": "zone:a",
    }
    values.update(kw)
    return Reading.model_validate(values, context={"now": T0})


def test_reading_line_golden() -> None:
    assert reading_line(_reading()) == (
        "reading,device=dev-1,gateway=gw.1,quantity=temperature,unit=Cel,zone=zone:a "
        f"value=21.5,seq=42i {T0_NS}"
    )


def test_reading_line_optional_fields_and_precision() -> None:
    reading = _reading(score=0.25, model_id="iforest-v2", quality=("anomaly",), zone=None)
    assert reading_line(reading, Precision.MS) == (
        "reading,device=dev-1,gateway=gw.1,quantity=temperature,unit=Cel "
        'value=21.5,seq=42i,score=0.25,model_id="iforest-v2",quality="anomaly" '
        f"{T0_NS // 1_000_000}"
    )


def test_timestamps_per_precision() -> None:
    assert timestamp(T0, Precision.NS) == T0_NS
    assert timestamp(T0, Precision.US) == T0_NS // 1000
    assert timestamp(T0, Precision.S) == 1782946800


def test_kpi_line_uses_window_end_and_keeps_ids_as_tags() -> None:
    kpi = KpiValue.model_validate(
        {
            "kpi_id": "eaqi",
            "kpi_version": "1",
            "zone": "center",
            "window_start": datetime(2026, 7, 1, 22, 0, tzinfo=UTC),
            "window_end": datetime(2026, 7, 1, 23, 0, tzinfo=UTC),
            "value": 3.0,
            "unit": "1",
            "sample_count": 60,
            "completeness": 1.0,
            "band": "moderate",
            "attributes": {"dominant_pollutant": 'pm2_5 "fine", dust'},
        },
        context={"now": T0},
    )
    measurement, tags, fields, t = parse_line(kpi_line(kpi))
    assert measurement == "kpi"
    assert tags == {
        "band": "moderate",
        "kpi": "eaqi",
        "unit": "1",
        "version": "1",
        "zone": "center",
    }
    assert fields["value"] == 3.0
    assert fields["sample_count"] == 60
    assert fields["attr_dominant_pollutant"] == 'pm2_5 "fine", dust'
    assert t == 1782946800 * 10**9


def test_alert_and_status_lines() -> None:
    alert = Alert.model_validate(
        {
            "fingerprint": "deadbeef",
            "rule_id": "heat",
            "state": "firing",
            "severity": "critical",
            "summary": 'Heat "extreme", zone a\\b',
            "zone": "a",
            "started_at": T0,
            "updated_at": T0,
        },
        context={"now": T0},
    )
    measurement, tags, fields, t = parse_line(alert_line(alert))
    assert (measurement, t) == ("alert", T0_NS)
    assert tags == {"rule": "heat", "zone": "a"}
    assert fields == {
        "active": 1,
        "state": "firing",
        "fingerprint": "deadbeef",
        "summary": 'Heat "extreme", zone a\\b',
        "severity": "critical",  # a field: a rule edited mid-incident keeps the series
    }
    # two alerts of one rule and zone changing state in the same instant: two series
    other = alert.model_copy(update={"fingerprint": "feedbeef", "device_id": "th-2"})
    assert parse_line(alert_line(other))[1]["device"] == "th-2"
    assert alert_line(other).split(" ")[0] != alert_line(alert).split(" ")[0]
    for state, active in (("acknowledged", 1), ("silenced", 1), ("resolved", 0)):
        changed = alert.model_copy(update={"state": AlertState(state)})
        assert parse_line(alert_line(changed))[2]["active"] == active, state
    status = GatewayStatus.model_validate(
        {
            "gateway_id": "gw1",
            "time": T0,
            "software_version": "0.1.0",
            "uptime_s": 5.0,
            "buffer_depth": 3,
            "buffer_bytes": 100,
            "buffer_capacity_bytes": 1000,
            "dropped": {"full": 2},
            "sources": {"sds011": "down"},
        },
        context={"now": T0},
    )
    _m, tags, fields, _t = parse_line(gateway_status_line(status))
    assert tags == {"gateway": "gw1"}
    assert fields["dropped_full"] == 2
    assert fields["source_up_sds011"] == 0
    assert fields["buffer_depth"] == 3


def test_same_record_renders_identically() -> None:
    """Replays overwrite: the same record always gives the same series and timestamp."""
    batch = ReadingBatch(gateway_id="gw.1", readings=(_reading(), _reading(seq=43)))
    raw = encode(batch)
    assert lines_for("readings", raw) == lines_for("readings", raw)


def test_escaping_golden() -> None:
    assert escape_key("a b,c=d\\") == "a\\ b\\,c\\=d\\\\"
    got = line("m x", {"t,k": "v q\\"}, {"f=k": 'say "hi" \\ bye'}, 1)
    assert got == 'm\\ x,t\\,k=v\\ q\\\\ f\\=k="say \\"hi\\" \\\\ bye" 1'


def test_quotes_outside_string_fields_are_refused() -> None:
    with pytest.raises(LineProtocolError, match="double quote"):
        line("m", {"unit": 'in"'}, {"f": 1.0}, 1)
    with pytest.raises(LineProtocolError, match="double quote"):
        line('m"', {}, {"f": 1.0}, 1)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "x\x00", ""])
def test_control_characters_and_empty_keys_are_refused(bad: str) -> None:
    with pytest.raises(LineProtocolError):
        escape_key(bad)
    with pytest.raises(LineProtocolError):
        line("m", {"tag": "ok"}, {"f": bad}, 1) if bad else line("m", {}, {bad: 1.0}, 1)


def test_point_without_fields_is_refused() -> None:
    with pytest.raises(LineProtocolError, match="at least one field"):
        line("m", {"t": "v"}, {"f": None}, 1)


# --------------------------------------------------------------------------- properties

# Any text the line-protocol layer accepts: everything except control characters.
printable = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30
)
specials = st.text(alphabet=' ,="\\=ab\u00e9', min_size=1, max_size=12)
hostile = st.one_of(printable, specials)
#: identifiers (measurement, tag keys and values, field keys) may not hold double quotes
ident = hostile.filter(lambda s: '"' not in s)


@settings(max_examples=400, deadline=None)
@given(
    measurement=ident.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(ident, ident, max_size=4),
    fields=st.dictionaries(
        ident,
        st.one_of(
            hostile,
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False, allow_infinity=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_no_value_can_inject_a_line_tag_or_field(
    measurement: str, tags: dict[str, str], fields: dict[str, object]
) -> None:
    text = line(measurement, dict(tags), fields, 1700000000000000000)
    parsed_measurement, parsed_tags, parsed_fields, t = parse_line(text)
    assert parsed_measurement == measurement
    assert parsed_tags == tags
    assert parsed_fields == fields
    assert t == 1700000000000000000


@settings(max_examples=200, deadline=None)
@given(device=hostile, gateway=hostile, zone=hostile)
def test_hostile_ids_are_rejected_by_the_contract_or_render_safely(
    device: str, gateway: str, zone: str
) -> None:
    """A record off the wire with any ids either fails the contract with an error naming
    the field, or renders to one line whose tags are exactly the ids."""
    record = {
        "gateway_id": gateway,
        "readings": [
            {
                "device_id": device,
                "gateway_id": gateway,
                "seq": 1,
                "quantity": "temperature",
                "value": 20.0,
                "unit": "Cel",
                "event_time": "2026-07-01T23:00:00Z",
                "ingest_time": "2026-07-01T23:00:00Z",
                "zone": zone,
            }
        ],
    }
    raw = orjson.dumps(record)
    try:
        decode(raw, ReadingBatch, now=T0)
    except ContractError as exc:
        assert any(n in str(exc) for n in ("device_id", "gateway_id", "zone"))  # noqa: PT017
        if not SAFE_ID.fullmatch(gateway):  # the envelope is bad: the whole record fails
            with pytest.raises(ContractError):
                lines_for("readings", raw)
            return
        # a sound envelope: the one reading is rejected alone, naming its field
        lines, split = render_record("readings", raw)
        assert lines == []
        assert split is not None
        (rejected,) = split.rejected
        assert any(n in rejected.error for n in ("device_id", "zone"))
        return
    (text,) = lines_for("readings", raw)
    _m, tags, fields, _t = parse_line(text)
    assert (tags["device"], tags["gateway"], tags["zone"]) == (device, gateway, zone)
    assert set(fields) == {"value", "seq"}


def test_one_alert_is_one_series_whatever_changes_while_it_lasts() -> None:
    """Series tags are what the fingerprint is made of; the rest are fields."""

    def series(**update: object) -> str:
        base = {
            "fingerprint": "0123456789abcdef",
            "rule_id": "stale",
            "state": "pending",
            "severity": "warning",
            "summary": "s",
            "device_id": "th-1",
            "started_at": T0,
            "updated_at": T0,
        }
        alert = Alert.model_validate({**base, **update}, context={"now": T0})
        return alert_line(alert).split(" ", 1)[0]

    device = series()
    assert device == "alert,device=th-1,rule=stale"
    # a device alert: its gateway (first unknown) and zone, severity, team, state
    for changed in (
        {"gateway_id": "gw-1"},
        {"gateway_id": "gw-2", "zone": "park"},
        {"severity": "critical", "team": "operators"},
        {"state": "resolved"},
    ):
        assert series(**changed) == device, changed
    _m, _tags, fields, _t = parse_line(
        alert_line(
            Alert.model_validate(
                {
                    "fingerprint": "0123456789abcdef",
                    "rule_id": "stale",
                    "state": "firing",
                    "severity": "warning",
                    "summary": "s",
                    "device_id": "th-1",
                    "zone": "park",
                    "gateway_id": "gw-1",
                    "team": "operators",
                    "started_at": T0,
                    "updated_at": T0,
                },
                context={"now": T0},
            )
        )
    )
    assert (fields["device_zone"], fields["device_gateway"], fields["team"]) == (
        "park",
        "gw-1",
        "operators",
    )
    # a KPI's zone is part of its fingerprint; the device's gateway still is not
    kpi = series(kpi_id="completeness", zone="centre")
    assert kpi == "alert,device=th-1,kpi=completeness,rule=stale,zone=centre"
    assert series(kpi_id="completeness", zone="centre", gateway_id="gw-1") == kpi
    assert series(kpi_id="completeness", zone="park") != kpi
    # zone and gateway alerts are scoped by them: one series each
    zone = series(device_id=None, zone="centre", kpi_id="uhi.night")
    assert zone == "alert,kpi=uhi.night,rule=stale,zone=centre"
    assert series(device_id=None, zone="park", kpi_id="uhi.night") != zone
    gateway = series(device_id=None, gateway_id="gw-1")
    assert gateway == "alert,gateway=gw-1,rule=stale"
    assert series(device_id=None, gateway_id="gw-2") != gateway


@settings(max_examples=200, deadline=None)
@given(summary=st.text(max_size=80), key=hostile)
def test_alert_text_cannot_inject(summary: str, key: str) -> None:
    base = {
        "fingerprint": "abcdef01",
        "rule_id": "r1",
        "state": "pending",
        "severity": "info",
        "summary": summary,
        "started_at": "2026-07-01T23:00:00Z",
        "updated_at": "2026-07-01T23:00:00Z",
        "labels": {key: "x"},
    }
    raw = orjson.dumps(base)
    try:
        alert = decode(raw, Alert, now=T0)
    except ContractError as exc:
        assert "summary" in str(exc) or "labels" in str(exc)  # noqa: PT017
        return
    _m, tags, fields, _t = parse_line(alert_line(alert))
    assert fields["summary"] == summary
    assert fields["state"] == "pending"
    assert set(tags) == {"rule"}
    assert fields["severity"] == "info"
