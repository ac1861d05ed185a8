"""``climastream tail`` filters and lines, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from climastream.contract import GatewayStatus, SourceState, Topics, decode, encode
from climastream.validation import key_path
from console.tail import StatusTracker, TailFilter, render


def _status(gateway: str) -> bytes:
    return encode(
        GatewayStatus(
            gateway_id=gateway,
            time=datetime(2026, 11, 24, 7, 27, 4, tzinfo=UTC),
            software_version="0.1.0",
            uptime_s=12.0,
            buffer_depth=3,
            buffer_bytes=900,
            buffer_capacity_bytes=10**6,
            buffer_oldest_age_s=42.0,
            readings_sent_total=4713,
            dropped={"buffer_full": 2},
            sources={"sds-usb0": SourceState.CONNECTING, "chirpstack": SourceState.UP},
        )
    )


def _text(line: object) -> str:
    console = Console(width=300, color_system=None)
    with console.capture() as captured:
        console.print(line)
    return captured.get().strip()


def test_status_shows_a_gateways_health_report_and_only_that() -> None:
    """An installer watching a gateway from the control room: sources, buffer, sent and
    drops, filtered by gateway id; readings stay off unless asked for."""
    flt = TailFilter(status=True, readings=False, gateways=frozenset({"gw-inst-1"}))
    assert flt.topics == (Topics.GATEWAY_STATUS.name,)
    [line], skipped = render(Topics.GATEWAY_STATUS.name, _status("gw-inst-1"), flt)
    assert skipped == ""
    text = _text(line)
    assert "status  gw-inst-1" in text
    assert "chirpstack:up sds-usb0:connecting" in text
    assert "buffered=3 (oldest 42s) sent=4713" in text
    assert "dropped=2 {'buffer_full': 2}" in text
    assert render(Topics.GATEWAY_STATUS.name, _status("gw-other"), flt) == ([], "")
    assert render(Topics.GATEWAY_STATUS.name, _status("gw-x"), TailFilter()) == ([], "")


def test_json_lines_of_readings_are_what_kpi_eval_reads(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """'tail --json' is how an operator captures readings for 'kpi eval': one Reading per
    line, as the wire contract has it, filtered like the table."""
    from climastream.cli import main
    from climastream.contract import Quantity, Reading, ReadingBatch

    at = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    batch = ReadingBatch(
        gateway_id="gw1",
        readings=tuple(
            Reading(
                device_id=device,
                gateway_id="gw1",
                seq=seq,
                quantity=Quantity.TEMPERATURE,
                value=20.0 + seq / 10,
                unit="Cel",
                event_time=at + timedelta(seconds=seq),
                ingest_time=at + timedelta(seconds=seq),
                zone=zone,
            )
            for seq, (device, zone) in enumerate([("t1", "centre"), ("t2", "park")] * 30)
        ),
    )
    flt = TailFilter(zones=frozenset({"centre"}))
    lines, skipped = render(Topics.READINGS.name, encode(batch), flt, as_json=True)
    assert skipped == ""
    assert len(lines) == 30
    assert all(decode(line, Reading).zone == "centre" for line in lines)
    path = Path(str(tmp_path)) / "r.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    assert main(["kpi", "eval", "--input", str(path), "--kpi", "stat.count"]) == 0
    kpis = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {k["value"] for k in kpis if k.get("device_id") == "t1"} == {30.0}


class _OneRecordConsumer:
    """Stands in for aiokafka's consumer: one partition of ``readings``, one record."""

    def __init__(self, value: bytes) -> None:
        self._value: bytes | None = value

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topics(self) -> set[str]:
        return {Topics.READINGS.name}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0} if topic == Topics.READINGS.name else set()

    def assign(self, partitions: object) -> None: ...

    async def end_offsets(self, partitions: list[object]) -> dict[object, int]:
        return dict.fromkeys(partitions, 1)

    async def beginning_offsets(self, partitions: list[object]) -> dict[object, int]:
        return dict.fromkeys(partitions, 0)

    def seek(self, tp: object, offset: int) -> None: ...

    async def position(self, tp: object) -> int:
        return 0

    async def getmany(self, **_: object) -> dict[object, list[object]]:
        from types import SimpleNamespace

        from aiokafka import TopicPartition

        value, self._value = self._value, None
        if value is None:
            return {}
        tp = TopicPartition(Topics.READINGS.name, 0)
        return {tp: [SimpleNamespace(value=value, offset=0)]}


@pytest.mark.parametrize("device_id", ["[/red]", "[bold]x", "sds:cool:1"])
async def test_a_bad_reading_is_named_as_written_and_tail_goes_on(
    device_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a record says is data, not rich markup: a device id such as '[/red]' made the
    'skipped bad readings' line raise MarkupError and ended tail with a traceback, and
    '[bold]x' lost its brackets, so the operator could not tell which device it was; the
    valid id 'sds:cool:1' (of a reading in a unit the cloud refuses) read 'sds🆒1'."""
    import asyncio

    import aiokafka

    from console import tail as tail_module

    now = datetime.now(UTC).isoformat()
    good = {
        "device_id": "d1", "gateway_id": "gw", "seq": 1, "quantity": "temperature",
        "value": 20.0, "unit": "Cel", "event_time": now, "ingest_time": now,
    }  # fmt: skip
    bad = {**good, "device_id": device_id, "unit": "K"}
    record = orjson.dumps({"schema_version": 1, "gateway_id": "gw", "readings": [good, bad]})
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", lambda **_: _OneRecordConsumer(record))
    stop = asyncio.Event()
    printed = await tail_module.tail(
        "127.0.0.1:1", TailFilter(), stop=stop, max_lines=1, console=Console(width=300)
    )
    assert printed == 1  # the good reading
    err = " ".join(capsys.readouterr().err.split())  # rich wraps the line on spaces
    assert f"readings.1 (device {key_path([device_id])})" in err


def _run_status(time: datetime, uptime_s: float, *, synced: bool | None = True) -> bytes:
    return encode(
        GatewayStatus(
            gateway_id="gw-pi-7",
            time=time,
            software_version="0.1.0",
            uptime_s=uptime_s,
            clock_synchronized=synced,
            buffer_depth=0,
            buffer_bytes=0,
            buffer_capacity_bytes=10**6,
        )
    )


def test_status_after_a_power_cut_says_which_is_older_and_which_clock_is_wrong() -> None:
    """A Pi ran from 07:00 to 08:00 (statuses buffered while its uplink was down), lost
    power and came back with fake-hwclock's 07:30: the new run's statuses carry 07:30+,
    and the old run's buffered ones arrive after them. The operator must see which line
    is the gateway's current health and which time is wrong."""
    now = [datetime(2026, 11, 24, 9, 0, tzinfo=UTC)]
    tracker = StatusTracker(clock=lambda: now[0])
    flt = TailFilter(status=True, readings=False)
    old_run = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
    behind = datetime(2026, 11, 24, 7, 30, tzinfo=UTC)

    def shown(raw: bytes) -> str:
        [line], _ = render(Topics.GATEWAY_STATUS.name, raw, flt, statuses=tracker)
        return _text(line)

    # the old run's last status, sent before the cut
    first = shown(_run_status(old_run + timedelta(minutes=55), 3300))
    assert "[older" not in first
    assert "unsynchronized" not in first
    now[0] += timedelta(minutes=10)  # the old run's newest is stale: the gateway restarted
    new = shown(_run_status(behind, 20, synced=False))
    assert new.startswith("07:30:00")
    assert "[older" not in new
    assert "(clock unsynchronized)" in new
    # the old run's status buffered before the cut arrives after the new run's
    buffered = shown(_run_status(old_run + timedelta(minutes=58), 3480))
    assert "[older: buffered, from an earlier run]" in buffered
    # the new run goes on; a status of it sent again is older than its newest
    now[0] += timedelta(seconds=30)
    assert "[older" not in shown(_run_status(behind + timedelta(seconds=30), 50, synced=False))
    assert "[older]" in shown(_run_status(behind, 20, synced=False))
    # without a tracker (a single record) nothing is marked older
    [line], _ = render(Topics.GATEWAY_STATUS.name, _run_status(behind, 20), flt)
    assert "[older" not in _text(line)
