"""The serial source on a real pseudo-terminal: frames become samples, noise is counted."""

from __future__ import annotations

import os
import tty

from climastream.contract import Quantity, SourceState
from edge.config import SerialSourceConfig
from edge.sources.serial_source import SerialSource
from firmware_bridge.serial_codecs.sds011 import encode_sds011


async def test_frames_after_line_noise_decode_and_the_noise_is_counted() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    source = SerialSource(
        SerialSourceConfig(
            name="sds", port=os.ttyname(slave), codec="sds011", device_id="sds-1", zone="centre"
        )
    )
    await source.start()
    try:
        assert source.state is SourceState.UP
        noise = b"\x13\x37\x00\xff\x42"
        os.write(master, noise + encode_sds011(12.3, 45.6))
        samples = await source.read()
        assert {(s.quantity, s.value) for s in samples} == {
            (Quantity.PM2_5, 12.3),
            (Quantity.PM10, 45.6),
        }
        assert {s.device_id for s in samples} == {"sds-1"}
        assert source.decode_errors == {"garbage_bytes": len(noise)}
    finally:
        await source.stop()
        os.close(master)
        os.close(slave)


async def test_a_port_that_does_not_open_says_what_to_do(tmp_path: object) -> None:
    """The reason reaches the log, the status and 'edge check' with the installer's next
    step: a wrong path, or a port the running service already holds."""
    import serial

    missing = SerialSource(
        SerialSourceConfig(name="gone", port=f"{tmp_path}/ttyUSB7", codec="sds011", device_id="s")
    )
    await missing.start()
    assert missing.state is SourceState.CONNECTING
    assert missing.last_error is not None
    assert "No such file or directory" in missing.last_error
    assert "is it plugged in" in missing.last_error

    master, slave = os.openpty()
    held = serial.Serial(os.ttyname(slave), exclusive=True)  # the service has it
    busy = SerialSource(
        SerialSourceConfig(name="busy", port=os.ttyname(slave), codec="sds011", device_id="s")
    )
    try:
        await busy.start()
        assert busy.state is SourceState.CONNECTING
        assert busy.last_error is not None
        assert "another process has the port open" in busy.last_error
    finally:
        await busy.stop()
        await missing.stop()
        held.close()
        os.close(master)
        os.close(slave)


async def test_frames_read_together_are_stamped_apart_in_their_order() -> None:
    """Frames that wait in the port until one read (a stalled reader, a device flushing
    after a reconnect) were all stamped with the read's time: two readings of one device,
    quantity and time, which the database keeps as one point. They are stamped 1 ms
    apart, the last at the read's time."""
    from datetime import UTC, datetime, timedelta

    master, slave = os.openpty()
    tty.setraw(slave)
    read_at = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    source = SerialSource(
        SerialSourceConfig(name="sds", port=os.ttyname(slave), codec="sds011", device_id="s1"),
        clock=lambda: read_at,
    )
    await source.start()
    try:
        os.write(master, b"".join(encode_sds011(10.0 + n, 20.0) for n in range(3)))
        samples: list = []
        while len(samples) < 6:
            samples += await source.read()
        pm25 = [(s.event_time, s.value) for s in samples if s.quantity is Quantity.PM2_5]
        assert pm25 == [(read_at - timedelta(milliseconds=2 - n), 10.0 + n) for n in range(3)]
        assert all(s.gateway_time for s in samples)
    finally:
        await source.stop()
        os.close(master)
        os.close(slave)
