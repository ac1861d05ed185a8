"""A decoder that raises instead of returning a DecodeError costs one message, not the source.

Left to propagate, the exception ended ``read_acked`` before the batch's ack was handed out:
the MQTT messages stayed unacked (redelivered after every reconnect, a poison message) and
the good messages of the batch were lost with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import tty
from dataclasses import dataclass, replace

import pytest

from climastream.contract import Quantity
from edge.config import MqttSourceConfig, SerialSourceConfig
from edge.sources.mqtt_source import MqttSource
from edge.sources.serial_source import SerialSource
from firmware_bridge import codecs
from firmware_bridge.model import DecodeResult
from firmware_bridge.serial_codecs.sds011 import Sds011Decoder, encode_sds011

POISON = b'[{"n": "temperature", "v": "poison"}]'


@dataclass
class _Message:
    topic: str
    payload: bytes
    mid: int
    qos: int = 1


class _Paho:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


class _Client:
    def __init__(self, messages: list[_Message]) -> None:
        self._client = _Paho()
        self.messages = list(messages)


class _Stream:
    def __init__(self, client: _Client) -> None:
        self._client = client

    async def __anext__(self) -> _Message:
        return self._client.messages.pop(0)


@pytest.fixture
def raising_senml(monkeypatch: pytest.MonkeyPatch) -> None:
    real = codecs.CODECS["senml"]

    def decode(payload: bytes, options: codecs.CodecOptions) -> list[DecodeResult]:
        if payload == POISON:
            raise RuntimeError("decoder bug")
        return real.decode(payload, options)

    monkeypatch.setitem(codecs.CODECS, "senml", replace(real, decode=decode))


async def test_mqtt_message_that_crashes_the_decoder_is_counted_and_acked(
    raising_senml: None, caplog: pytest.LogCaptureFixture
) -> None:
    source = MqttSource(MqttSourceConfig(name="senml", topics=("city/#",), format="senml"))
    good = [{"bn": "st1:", "n": "temperature", "v": 21.5}]
    messages = [
        _Message("city/a/st1", json.dumps(good).encode(), 1),
        _Message("city/a/bad", POISON, 2),
        _Message("city/a/st1", json.dumps(good).encode(), 3),
    ]
    client = _Client(messages)
    source._client = client
    source._messages = _Stream(client)

    samples, ack = await source.read_acked()
    ack()

    assert [(s.device_id, s.quantity, s.value) for s in samples] == [
        ("st1", Quantity.TEMPERATURE, 21.5),
        ("st1", Quantity.TEMPERATURE, 21.5),
    ]
    assert source.decode_errors == {"internal_error": 1}
    assert client._client.acked == [1, 2, 3]  # the poison message too: no redelivery loop
    assert "city/a/bad" in caplog.text


class _RaisingSds011(Sds011Decoder):
    def feed(self, chunk: bytes) -> list[DecodeResult]:
        if b"\xee" in chunk:
            raise RuntimeError("decoder bug")
        return super().feed(chunk)


async def test_serial_read_that_crashes_the_decoder_is_counted_and_reading_goes_on() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    source = SerialSource(
        SerialSourceConfig(name="sds", port=os.ttyname(slave), codec="sds011", device_id="s1")
    )
    source._decoder = _RaisingSds011(device_id="s1")
    await source.start()
    try:
        # one byte: a read cannot split it, so the decoder raises exactly once, and the
        # frame written after it cannot share its read
        os.write(master, b"\xee")
        reading = asyncio.create_task(source.read())
        while not source.decode_errors:  # the poison read was fed (and raised)
            assert not reading.done(), reading
            await asyncio.sleep(0.01)
        os.write(master, encode_sds011(12.3, 45.6))
        samples = await asyncio.wait_for(reading, 30)
        assert {(s.quantity, s.value) for s in samples} == {
            (Quantity.PM2_5, 12.3),
            (Quantity.PM10, 45.6),
        }
        assert source.decode_errors == {"internal_error": 1}
    finally:
        await source.stop()
        os.close(master)
        os.close(slave)
