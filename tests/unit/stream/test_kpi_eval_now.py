"""``kpi eval --now``: which hour and day windows have ended is judged at a given time,
not on the wall clock, so the same input and ``--now`` always print the same KPIs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from climastream.cli import main
from climastream.contract import Quantity, Reading, encode

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def _write(path: Path) -> list[str]:
    """NO2 every minute from 0:00 to 1:29 (EAQI periods of 1 h: the second one unfinished
    in the data), and the config; the argv of ``kpi eval`` over them."""
    rows = []
    for minute in range(90):
        at = T0 + timedelta(minutes=minute)
        rows.append(
            Reading(device_id="n1", gateway_id="gw1", seq=minute, quantity=Quantity.NO2,
                    value=30.0, unit="ug/m3", event_time=at, ingest_time=at, zone="centre")
        )  # fmt: skip
    (path / "r.jsonl").write_bytes(b"".join(encode(r) + b"\n" for r in rows))
    (path / "stream.yaml").write_text("window: 10m\ngrace: 1m\nkpis: [eaqi.pollutant]\n")
    return ["kpi", "eval", "--input", str(path / "r.jsonl"), "--config", str(path / "stream.yaml")]


def _periods(out: str) -> list[str]:
    return [line.split('"window_start":"')[1][:16] for line in out.splitlines()]


@pytest.mark.parametrize(
    ("now", "periods"),
    [
        # the 1:00 period has not ended (nor its grace): only 0:00
        ("2026-03-02T01:45:00Z", ["2026-03-02T00:00"]),
        ("2026-03-02T02:45:00+01:00", ["2026-03-02T00:00"]),  # the same time
        # past 2:00 + grace: the 1:00 period is closed with what it has
        ("2026-03-02T02:01:00Z", ["2026-03-02T00:00", "2026-03-02T01:00"]),
    ],
)
def test_now_decides_whether_the_unfinished_period_is_emitted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], now: str, periods: list[str]
) -> None:
    argv = _write(tmp_path)
    assert main([*argv, "--now", now]) == 0
    out, _ = capfd.readouterr()
    assert _periods(out) == periods
    # the wall clock (years later than the data) closes both
    assert main(argv) == 0
    assert len(_periods(capfd.readouterr().out)) == 2


@pytest.mark.parametrize(
    ("now", "says"),
    [
        ("yesterday", "not an RFC 3339 time: 'yesterday'"),
        ("2026-03-02T01:45:00", "has no UTC offset"),
    ],
)
def test_a_bad_now_is_refused_with_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], now: str, says: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*_write(tmp_path), "--now", now])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--now" in err
    assert says in err
