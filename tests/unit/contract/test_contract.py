"""The wire contract: exact round trips, and clear rejection of malformed records."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from climastream.contract import (
    EARLIEST_EVENT_TIME,
    MAX_SILENCE,
    PARTIAL_BATCH_REASON,
    TOPICS,
    Alert,
    AlertAction,
    AlertActionKind,
    AlertSeverity,
    AlertState,
    ContractError,
    EvidencePoint,
    GatewayStatus,
    KpiValue,
    Location,
    QualityFlag,
    Quantity,
    Reading,
    ReadingBatch,
    SourceState,
    Topics,
    decode,
    decode_batch,
    encode,
)
from climastream.quantities import CANONICAL_UNITS, SPECS

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

safe_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:\-]{0,30}\Z")
times = st.datetimes(
    min_value=datetime(2015, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by design
    max_value=datetime(2026, 11, 23, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
locations = st.builds(
    Location,
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    alt_m=st.none() | st.floats(-1000, 20000),
)


@st.composite
def readings(draw: st.DrawFn, gateway_id: str | None = None) -> Reading:
    quantity = draw(st.sampled_from(list(Quantity)))
    spec = SPECS[quantity]
    low = max(spec.low, -1e12)
    high = min(spec.high, 1e12)
    model_id = draw(st.none() | safe_ids)
    return Reading(
        device_id=draw(safe_ids),
        gateway_id=gateway_id or draw(safe_ids),
        seq=draw(st.integers(0, 2**63 - 1)),
        quantity=quantity,
        value=draw(st.floats(low, high)),
        unit=CANONICAL_UNITS[quantity],
        event_time=draw(times),
        ingest_time=draw(times),
        location=draw(st.none() | locations),
        zone=draw(st.none() | safe_ids),
        quality=tuple(draw(st.lists(st.sampled_from(list(QualityFlag)), max_size=3))),
        score=draw(finite) if model_id else None,
        model_id=model_id,
    )


@st.composite
def batches(draw: st.DrawFn) -> ReadingBatch:
    gateway_id = draw(safe_ids)
    items = draw(st.lists(readings(gateway_id), min_size=1, max_size=5))
    return ReadingBatch(gateway_id=gateway_id, readings=tuple(items))


@st.composite
def kpis(draw: st.DrawFn) -> KpiValue:
    start = draw(times)
    return KpiValue(
        kpi_id=draw(safe_ids),
        kpi_version=draw(safe_ids),
        zone=draw(safe_ids),
        device_id=draw(st.none() | safe_ids),
        quantity=draw(st.none() | st.sampled_from(list(Quantity))),
        window_start=start,
        window_end=start + timedelta(seconds=draw(st.integers(1, 86400))),
        value=draw(finite),
        unit="Cel",
        sample_count=draw(st.integers(0, 10**9)),
        completeness=draw(st.floats(0, 1)),
        band=draw(st.none() | st.sampled_from(["good", "poor"])),
        attributes=draw(st.dictionaries(safe_ids, st.text(max_size=20).filter(str.isprintable))),
        model_ids=tuple(draw(st.lists(safe_ids, max_size=2))),
    )


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    started = draw(times)
    return Alert(
        fingerprint=draw(st.from_regex(r"\A[0-9a-f]{16}\Z")),
        rule_id=draw(safe_ids),
        state=draw(st.sampled_from(list(AlertState))),
        severity=draw(st.sampled_from(list(AlertSeverity))),
        summary=draw(st.text(max_size=80).filter(str.isprintable)),
        description=draw(st.text(max_size=200).filter(lambda s: "\x00" not in s)),
        zone=draw(st.none() | safe_ids),
        value=draw(st.none() | finite),
        threshold=draw(st.none() | finite),
        started_at=started,
        updated_at=started,
        evidence=tuple(
            draw(
                st.lists(
                    st.builds(EvidencePoint, time=times, value=finite, device_id=safe_ids),
                    max_size=3,
                )
            )
        ),
    )


@st.composite
def statuses(draw: st.DrawFn) -> GatewayStatus:
    return GatewayStatus(
        gateway_id=draw(safe_ids),
        time=draw(times),
        software_version="0.1.0",
        uptime_s=draw(st.floats(0, 1e9)),
        buffer_depth=draw(st.integers(0, 10**9)),
        buffer_bytes=draw(st.integers(0, 10**12)),
        buffer_capacity_bytes=draw(st.integers(0, 10**12)),
        buffer_oldest_age_s=draw(st.none() | st.floats(0, 1e9)),
        outage_capacity_hours=draw(st.none() | st.floats(0, 1e6)),
        dropped=draw(st.dictionaries(safe_ids, st.integers(0, 10**9), max_size=3)),
        sources=draw(st.dictionaries(safe_ids, st.sampled_from(list(SourceState)), max_size=3)),
        clock_synchronized=draw(st.none() | st.booleans()),
    )


@st.composite
def actions(draw: st.DrawFn) -> AlertAction:
    kind = draw(st.sampled_from(list(AlertActionKind)))
    at = draw(times)
    until = None
    if kind is AlertActionKind.SILENCE:
        # a silence may end up to 7 days after it was asked for, however far ahead of now
        lasts = st.timedeltas(timedelta(microseconds=1), MAX_SILENCE)
        until = draw(st.none() | lasts.map(lambda d: at + d))
    return AlertAction(
        fingerprint=draw(st.from_regex(r"\A[0-9a-f]{16}\Z")),
        action=kind,
        actor=draw(safe_ids),
        at=at,
        until=until,
        comment=draw(st.text(max_size=40).filter(str.isprintable)),
    )


@settings(max_examples=150, deadline=None)
@given(st.one_of(readings(), batches(), kpis(), alerts(), statuses(), actions()))
def test_every_model_round_trips_exactly(model: Reading) -> None:
    raw = encode(model)
    assert decode(raw, type(model), now=NOW) == model
    # and the encoding is stable: encoding the decoded copy gives the same bytes
    assert encode(decode(raw, type(model), now=NOW)) == raw


def test_a_silence_may_last_days_but_must_end_after_it_starts() -> None:
    """``until`` is a future time by design: a 7-day silence is valid (it was refused as
    "more than 1:00:00 ahead of now", so no silence could last longer than an hour), and
    it survives the trip through Kafka, decoded days before it ends."""
    week = AlertAction(
        fingerprint="0123456789abcdef",
        action=AlertActionKind.SILENCE,
        actor="ana",
        at=NOW,
        until=NOW + MAX_SILENCE,
    )
    assert decode(encode(week), AlertAction, now=NOW) == week
    # an offset is normalised to UTC, like every other time
    local = datetime(2026, 11, 23, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    silenced = AlertAction.model_validate({**week.model_dump(), "until": local})
    assert silenced.until == NOW + timedelta(hours=2)
    assert silenced.until.tzinfo is UTC
    for until, problem in [
        (NOW, "must be after at"),
        (NOW + MAX_SILENCE + timedelta(seconds=1), "at most 7 days after it"),
    ]:
        with pytest.raises(ValueError, match=problem):
            AlertAction.model_validate({**week.model_dump(), "until": until})
    with pytest.raises(ValueError, match="until applies only to action 'silence'"):
        AlertAction.model_validate({**week.model_dump(), "action": "acknowledge"})


def _reading_json(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "schema_version": 1,
        "device_id": "th-centre-1",
        "gateway_id": "gw-1",
        "seq": 7,
        "quantity": "temperature",
        "value": 21.5,
        "unit": "Cel",
        "event_time": "2026-11-23T11:59:00Z",
        "ingest_time": "2026-11-23T11:59:01Z",
    }
    record.update(overrides)
    return record


def test_a_valid_record_decodes_with_utc_times() -> None:
    reading = decode(
        orjson.dumps(_reading_json(event_time="2026-11-23T12:59:00+01:00")), Reading, now=NOW
    )
    assert reading.event_time == datetime(2026, 11, 23, 11, 59, tzinfo=UTC)
    assert reading.event_time.tzinfo is UTC


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"value": "NaN"}, "value"),
        ({"quantity": "temprature"}, "quantity"),
        ({"unit": "K"}, "not the canonical unit 'Cel'"),
        ({"value": -300.0}, "outside the plausible range"),
        ({"quantity": "relative_humidity", "unit": "%RH", "value": 140.0}, "plausible range"),
        ({"event_time": "2026-11-23T11:59:00"}, "event_time"),
        ({"event_time": "1970-01-01T00:00:00Z"}, "device clock is probably unset"),
        ({"event_time": "2027-11-23T00:00:00Z"}, "ahead of now"),
        ({"event_time": 1795410771}, "event_time"),
        ({"device_id": "dev 1"}, "device_id"),
        ({"device_id": "a,b=c"}, "device_id"),
        ({"device_id": "x\nweather,zone=evil v=1"}, "device_id"),
        ({"gateway_id": ""}, "gateway_id"),
        ({"seq": -1}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"seq": "7"}, "seq"),
        ({"schema_version": 2}, "schema_version"),
        ({"colour": "red"}, "colour"),
        ({"score": 0.5}, "score given without the model_id"),
    ],
)
def test_malformed_readings_are_rejected_naming_the_field(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ContractError) as caught:
        decode(orjson.dumps(_reading_json(**overrides)), Reading, now=NOW)
    assert message in str(caught.value)
    assert caught.value.raw is not None


def test_json_nan_and_infinity_are_rejected() -> None:
    raw = orjson.dumps(_reading_json()).replace(b"21.5", b"NaN")
    with pytest.raises(ContractError, match="value"):
        decode(raw, Reading, now=NOW)
    raw = orjson.dumps(_reading_json()).replace(b"21.5", b"1e999")
    with pytest.raises(ContractError, match="value"):
        decode(raw, Reading, now=NOW)


def test_python_construction_rejects_infinity() -> None:
    with pytest.raises(ValueError, match="finite"):
        Reading(**{**_reading_json(), "value": math.inf})  # type: ignore[arg-type]


def test_batch_rejects_a_reading_of_another_gateway() -> None:
    record = {
        "gateway_id": "gw-1",
        "readings": [_reading_json(), _reading_json(gateway_id="gw-2", seq=8)],
    }
    with pytest.raises(ContractError, match=r"readings\.1\.gateway_id 'gw-2' differs"):
        decode(orjson.dumps(record), ReadingBatch, now=NOW)


def test_empty_batch_and_non_json_are_rejected() -> None:
    with pytest.raises(ContractError, match="readings"):
        decode(b'{"gateway_id": "gw-1", "readings": []}', ReadingBatch, now=NOW)
    with pytest.raises(ContractError, match="invalid ReadingBatch"):
        decode(b"\xff\x00garbage", ReadingBatch, now=NOW)


def test_kpi_needs_a_scope_and_a_forward_window() -> None:
    base = {
        "kpi_id": "stat.mean",
        "kpi_version": "1",
        "window_start": "2026-11-23T11:00:00Z",
        "window_end": "2026-11-23T11:00:10Z",
        "value": 1.0,
        "unit": "Cel",
        "sample_count": 10,
        "completeness": 1.0,
    }
    with pytest.raises(ContractError, match="needs a zone or a device_id"):
        decode(orjson.dumps(base), KpiValue, now=NOW)
    with pytest.raises(ContractError, match="window_end must be after window_start"):
        decode(
            orjson.dumps({**base, "zone": "centre", "window_end": "2026-11-23T11:00:00Z"}),
            KpiValue,
            now=NOW,
        )
    with pytest.raises(ContractError, match="completeness"):
        decode(orjson.dumps({**base, "zone": "centre", "completeness": 1.5}), KpiValue, now=NOW)


# a newline (a forged mail header), and the Unicode line breaks and C1 controls
@pytest.mark.parametrize(
    "text", ["hot\nSubject: injected", "a\x85b", "a\u2028b", "a\u2029b", "a\x9fb"]
)
def test_alert_summary_is_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="control characters"):
        Alert(
            fingerprint="0123456789abcdef",
            rule_id="uhi-night",
            state=AlertState.FIRING,
            severity=AlertSeverity.WARNING,
            summary=text,
            started_at=NOW,
            updated_at=NOW,
        )


@pytest.mark.parametrize("unit", ['ug"m3', "a b", "k=v", "a,b", "C\\", "x" * 17])
def test_a_unit_is_a_symbol_safe_to_use_as_a_tag(unit: str) -> None:
    """Units become line-protocol tags: the contract refuses what a tag cannot carry."""
    base = {
        "kpi_id": "stat.mean",
        "kpi_version": "1",
        "zone": "centre",
        "window_start": "2026-11-23T11:00:00Z",
        "window_end": "2026-11-23T11:00:10Z",
        "value": 1.0,
        "unit": unit,
        "sample_count": 10,
        "completeness": 1.0,
    }
    with pytest.raises(ContractError, match="unit: String should match pattern"):
        decode(orjson.dumps(base), KpiValue, now=NOW)
    assert decode(orjson.dumps({**base, "unit": "Cel/min"}), KpiValue, now=NOW).unit == "Cel/min"


def test_a_hostile_key_in_an_error_path_is_quoted() -> None:
    status = {
        "gateway_id": "gw1",
        "time": "2026-11-23T11:00:00Z",
        "software_version": "1",
        "uptime_s": 1.0,
        "buffer_depth": 0,
        "buffer_bytes": 0,
        "buffer_capacity_bytes": 1,
        "sources": {"mqtt\nINJECTED": "up"},
    }
    with pytest.raises(ContractError) as info:
        decode(orjson.dumps(status), GatewayStatus, now=NOW)
    assert "\n" not in str(info.value)
    assert "'mqtt\\nINJECTED'" in str(info.value)


def test_a_status_without_clock_synchronized_still_decodes() -> None:
    """Gateways older than ``clock_synchronized`` keep reporting (None: not known); a
    status that has it decodes with it; it is a JSON boolean, nothing else."""
    old = {
        "schema_version": 1,
        "gateway_id": "gw1",
        "time": "2026-11-23T11:00:00Z",
        "software_version": "0.9.0",
        "uptime_s": 12.5,
        "buffer_depth": 0,
        "buffer_bytes": 0,
        "buffer_capacity_bytes": 1,
    }
    assert decode(orjson.dumps(old), GatewayStatus, now=NOW).clock_synchronized is None
    new = {**old, "clock_synchronized": False}
    assert decode(orjson.dumps(new), GatewayStatus, now=NOW).clock_synchronized is False
    unknown = {**old, "clock_synchronized": None}  # null: not known, as when absent
    assert decode(orjson.dumps(unknown), GatewayStatus, now=NOW).clock_synchronized is None
    for wrong in (0, "false"):
        with pytest.raises(ContractError, match="clock_synchronized"):
            decode(orjson.dumps({**old, "clock_synchronized": wrong}), GatewayStatus, now=NOW)
    # re-encoded, an old status is byte for byte what an old consumer accepts
    assert b"clock_synchronized" not in encode(decode(orjson.dumps(old), GatewayStatus, now=NOW))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_never_raise_anything_but_contract_error(raw: bytes) -> None:
    for model in (Reading, ReadingBatch, KpiValue, Alert, GatewayStatus, AlertAction):
        with contextlib.suppress(ContractError):
            decode(raw, model, now=NOW)


def test_topic_names_are_unique_and_in_one_place() -> None:
    names = [spec.name for spec in TOPICS]
    assert len(names) == len(set(names))
    assert Topics.READINGS.name == "readings"
    assert Topics.KPI.name == "kpi"
    assert all(spec.partitions >= 1 for spec in TOPICS)


def test_earliest_event_time_is_after_unset_clocks() -> None:
    assert EARLIEST_EVENT_TIME.year >= 2015


# --------------------------------------------------------------------------- batch split


def _batch_json(readings: list[object], gateway_id: str = "gw-1") -> bytes:
    return orjson.dumps({"schema_version": 1, "gateway_id": gateway_id, "readings": readings})


def test_a_valid_batch_splits_into_all_its_readings() -> None:
    raw = _batch_json([_reading_json(seq=seq) for seq in range(3)])
    split = decode_batch(raw, now=NOW)
    assert split.readings == decode(raw, ReadingBatch, now=NOW).readings
    assert split.rejected == ()
    assert split.key == b"gw-1"


def test_one_bad_reading_is_rejected_alone_naming_index_device_and_field() -> None:
    ahead = _reading_json(device_id="fast-clock", seq=9, event_time="2026-11-23T14:00:00Z")
    good = [_reading_json(seq=seq) for seq in range(5)]
    raw = _batch_json([*good[:2], ahead, *good[2:]])
    with pytest.raises(ContractError):  # the whole record fails the contract
        decode(raw, ReadingBatch, now=NOW)
    split = decode_batch(raw, now=NOW)
    assert [r.seq for r in split.readings] == [0, 1, 2, 3, 4]
    assert split.readings == tuple(decode(orjson.dumps(r), Reading, now=NOW) for r in good)
    (rejected,) = split.rejected
    assert (rejected.index, rejected.device_id) == (2, "fast-clock")
    assert orjson.loads(rejected.raw) == ahead
    error = split.dead_letter_error()
    assert "1 of 6 readings rejected, the other 5 kept" in error
    assert "readings.2 (device fast-clock): " in error
    assert "event_time 2026-11-23T14:00:00+00:00 is more than 1:00:00 ahead" in error
    assert orjson.loads(split.dead_letter_value()) == {
        "schema_version": 1, "gateway_id": "gw-1", "readings": [ahead],
    }  # fmt: skip
    assert PARTIAL_BATCH_REASON == "partial-batch"


def test_each_kind_of_bad_reading_is_named_and_the_rest_kept() -> None:
    raw = _batch_json(
        [
            _reading_json(seq=1),
            _reading_json(seq=2, unit="K"),
            5,
            _reading_json(seq=3, gateway_id="gw-2", device_id="roamer"),
            _reading_json(seq=4, device_id="bad\nid"),
            _reading_json(seq=5),
        ]
    ).replace(b'"seq":2,', b'"seq":-2,')
    split = decode_batch(raw, now=NOW)
    assert [r.seq for r in split.readings] == [1, 5]
    named = [r.describe() for r in split.rejected]
    assert named[0].startswith("readings.1 (device th-centre-1): seq: ")
    assert named[1] == "readings.2 (no device_id): Input should be an object"
    assert named[2] == (
        "readings.3 (device roamer): gateway_id 'gw-2' differs from the batch gateway_id 'gw-1'"
    )
    assert named[3].startswith("readings.4 (device 'bad\\nid'): device_id: ")
    assert "\n" not in split.dead_letter_error()
    value = orjson.loads(split.dead_letter_value())
    assert [r if isinstance(r, int) else r["seq"] for r in value["readings"]] == [-2, 5, 3, 4]


def test_a_long_error_stays_bounded_and_counts_the_rest() -> None:
    raw = _batch_json([_reading_json(seq=seq, unit="K") for seq in range(200)])
    split = decode_batch(raw, now=NOW)
    assert split.readings == ()
    assert len(split.rejected) == 200
    error = split.dead_letter_error(limit=1000)
    assert len(error) < 1300
    shown = error.count("(device th-centre-1)")
    assert 0 < shown < 200
    assert error.endswith(f" (and {200 - shown} more)")


def _strict_json(raw: bytes) -> object:
    """Parse as a strict JSON reader (jq, Jackson) would: no NaN or Infinity."""

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    return json.loads(raw, parse_constant=refuse)


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        (b"1e400", b'"value":"Infinity"'),  # too large for a float
        (b"-1e400", b'"value":"-Infinity"'),
        (b"NaN", b'"value":"NaN"'),  # the parser accepts these constants, JSON does not
        (b"Infinity", b'"value":"Infinity"'),
        (b"-Infinity", b'"value":"-Infinity"'),
        (b"123456789012345678901234567890", b'"value":123456789012345678901234567890'),
    ],
)
def test_a_partial_batch_dead_letter_is_valid_json(written: bytes, kept: bytes) -> None:
    good = orjson.dumps(_reading_json(seq=1))
    bad = orjson.dumps(_reading_json(seq=2, device_id="NaN")).replace(b"21.5", written)
    raw = b'{"schema_version":1,"gateway_id":"gw-1","readings":[' + good + b"," + bad + b"]}"
    split = decode_batch(raw, now=NOW)
    assert [r.seq for r in split.readings] == [1]
    (rejected,) = split.rejected
    assert "value" in rejected.error
    value = split.dead_letter_value()
    parsed = _strict_json(value)
    assert isinstance(parsed, dict)
    assert parsed["readings"][0]["device_id"] == "NaN"  # a string stays a string
    assert kept in value


def test_a_rejected_reading_is_re_serialised_as_valid_json_with_the_same_values() -> None:
    bad = b'{ "seq" : 2,\n  "value": 1.50E+400, "note": "NaN", "unit":"K" , "x": NaN, "y": 1.5E+1}'
    raw = b'{"gateway_id": "gw-1",\n "readings": [\n ' + bad + b" ,\n  5 ] }"
    split = decode_batch(raw, now=NOW)
    assert _strict_json(split.dead_letter_value()) == {
        "schema_version": 1, "gateway_id": "gw-1",
        "readings": [
            {"seq": 2, "value": "Infinity", "note": "NaN", "unit": "K", "x": "NaN", "y": 15.0},
            5,
        ],
    }  # fmt: skip


def test_the_dead_letter_holds_the_readings_the_parser_used() -> None:
    """An escaped key, or a key given twice (the parser keeps the last)."""
    bad = orjson.dumps(_reading_json(seq=2)).replace(b"21.5", b"1e400")
    escaped = b'{"gateway_id":"gw-1","r\\u0065adings":[' + bad + b"]}"
    twice = b'{"gateway_id":"gw-1","readings":[5,6],"readings":[' + bad + b"]}"
    for raw in (escaped, twice):
        split = decode_batch(raw, now=NOW)
        assert len(split.rejected) == 1
        parsed = _strict_json(split.dead_letter_value())
        assert isinstance(parsed, dict)
        assert [r["seq"] for r in parsed["readings"]] == [2]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\x00garbage", "invalid ReadingBatch"),
        (b"[]", "Input should be an object"),
        (b'{"gateway_id": "gw-1", "readings": []}', "readings"),
        (b'{"gateway_id": "gw 1", "readings": [5]}', "gateway_id"),
        (b'{"readings": [5]}', "gateway_id"),
        (b'{"schema_version": 2, "gateway_id": "gw-1", "readings": [5]}', "schema_version"),
        (b'{"gateway_id": "gw-1", "readings": [5], "colour": "red"}', "colour"),
        (b'{"gateway_id": "gw-1", "readings": {"0": 5}}', "readings"),
    ],
)
def test_a_bad_envelope_fails_whole_as_decode_says(raw: bytes, message: str) -> None:
    with pytest.raises(ContractError) as whole:
        decode(raw, ReadingBatch, now=NOW)
    with pytest.raises(ContractError) as split:
        decode_batch(raw, now=NOW)
    assert str(split.value) == str(whole.value)
    assert message in str(split.value)
    assert split.value.raw == raw


def test_the_future_bound_moves_only_one_way_with_now() -> None:
    """The split depends on ``now`` through the future bound alone: a replay with the same
    ``now`` splits the same; a later one may keep a reading once rejected as ahead, never
    reject one kept."""
    raw = _batch_json(
        [_reading_json(seq=1), _reading_json(seq=2, event_time="2026-11-23T14:00:00Z")]
    )
    first = decode_batch(raw, now=NOW)
    assert decode_batch(raw, now=NOW) == first
    assert [r.seq for r in first.readings] == [1]
    later = decode_batch(raw, now=NOW + timedelta(hours=1))
    assert [r.seq for r in later.readings] == [1, 2]
    assert later.rejected == ()


@st.composite
def mixed_batches(draw: st.DrawFn) -> tuple[bytes, list[bool]]:
    """A sound envelope whose readings are valid or broken in one of several ways."""
    gateway_id = draw(safe_ids)
    items: list[object] = []
    valid: list[bool] = []
    for reading in draw(st.lists(readings(gateway_id), min_size=1, max_size=6)):
        item = orjson.loads(encode(reading))
        breakage = draw(st.sampled_from(["none", "none", "unit", "future", "gateway", "seq"]))
        if breakage == "unit":
            item["unit"] = "nope"
        elif breakage == "future":
            item["event_time"] = (NOW + timedelta(hours=2)).isoformat()
        elif breakage == "gateway":
            item["gateway_id"] = gateway_id + "x"
        elif breakage == "seq":
            item["seq"] = -1
        items.append(item)
        valid.append(breakage == "none")
    return _batch_json(items, gateway_id), valid


@settings(max_examples=150, deadline=None)
@given(mixed_batches())
def test_the_split_keeps_exactly_the_readings_valid_on_their_own(
    case: tuple[bytes, list[bool]],
) -> None:
    raw, valid = case
    split = decode_batch(raw, now=NOW)
    items = orjson.loads(raw)["readings"]
    assert split.readings == tuple(
        decode(orjson.dumps(item), Reading, now=NOW)
        for item, ok in zip(items, valid, strict=True)
        if ok
    )
    assert [r.index for r in split.rejected] == [i for i, ok in enumerate(valid) if not ok]
    assert [orjson.loads(r.raw) for r in split.rejected] == [
        item for item, ok in zip(items, valid, strict=True) if not ok
    ]
    if all(valid):
        assert split.readings == decode(raw, ReadingBatch, now=NOW).readings


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_never_split_with_anything_but_contract_error(raw: bytes) -> None:
    with contextlib.suppress(ContractError):
        decode_batch(raw, now=NOW)
