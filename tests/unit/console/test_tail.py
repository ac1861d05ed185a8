"""``climastream tail`` filters and lines, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from climastream.contract import GatewayStatus, SourceState, Topics, encode
from console.tail import TailFilter, render_record


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
    [line] = render_record(Topics.GATEWAY_STATUS.name, _status("gw-inst-1"), flt)
    text = _text(line)
    assert "status  gw-inst-1" in text
    assert "chirpstack:up sds-usb0:connecting" in text
    assert "buffered=3 (oldest 42s) sent=4713" in text
    assert "dropped=2 {'buffer_full': 2}" in text
    assert list(render_record(Topics.GATEWAY_STATUS.name, _status("gw-other"), flt)) == []
    assert list(render_record(Topics.GATEWAY_STATUS.name, _status("gw-x"), TailFilter())) == []
