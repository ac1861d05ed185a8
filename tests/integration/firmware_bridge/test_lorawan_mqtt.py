"""Simulated LoRaWAN uplinks through the real Mosquitto, decoded with fCnt and RSSI."""

from __future__ import annotations

import json
import queue
import uuid
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
import pytest

from climastream.quantities import Quantity
from climastream.stack import Stack
from firmware_bridge.codecs import decode_payload
from firmware_bridge.model import Decoded
from firmware_bridge.simulators import FakeClock
from firmware_bridge.simulators.lorawan import VirtualLoRaWANDevice, publish_uplinks

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("network_server", ["chirpstack", "tts"])
def test_uplinks_through_mosquitto_keep_fcnt_and_rssi(stack: Stack, network_server: str) -> None:
    host, port = stack.config.host, stack.config.mqtt_port
    app = f"it-{uuid.uuid4().hex[:6]}"
    clock = FakeClock(datetime(2024, 7, 1, 21, tzinfo=UTC))
    device = VirtualLoRaWANDevice(
        "70B3D57ED0000A01",
        network_server=network_server,  # type: ignore[arg-type]
        application_id=app,
        seed=11,
        clock=clock,
    )
    truths = []
    uplinks = []
    for _ in range(5):
        made = device.uplink()
        assert made is not None
        topic, document, truth = made
        uplinks.append((topic, document))
        truths.append(truth)
        clock.advance(60)

    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"it-sub-{app}")
    subscriber.on_message = lambda _c, _u, msg: received.put((msg.topic, msg.payload))
    subscribed = queue.Queue[int]()
    subscriber.on_subscribe = lambda *_a: subscribed.put(1)
    subscriber.connect(host, port)
    subscriber.loop_start()
    try:
        pattern = (
            f"application/{app}/device/+/event/up"
            if network_server == "chirpstack"
            else f"v3/{app}@ttn/devices/+/up"
        )
        subscriber.subscribe(pattern, qos=1)
        subscribed.get(timeout=10)
        assert publish_uplinks(host, port, uplinks) == 5
        messages = [received.get(timeout=10) for _ in range(5)]
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()

    for (topic, payload), truth in zip(messages, truths, strict=True):
        assert truth.dev_eui in topic
        (result,) = decode_payload(network_server, payload)
        assert isinstance(result, Decoded), result
        by_quantity = {m.quantity: m for m in result.measurements}
        assert by_quantity[Quantity.TEMPERATURE].value == pytest.approx(truth.temperature)
        assert by_quantity[Quantity.RELATIVE_HUMIDITY].value == truth.humidity
        assert by_quantity[Quantity.RSSI].value == truth.rssi
        assert by_quantity[Quantity.SNR].value == truth.snr
        for m in result.measurements:
            assert m.seq == truth.f_cnt
            assert m.device_id == "70b3d57ed0000a01"
            assert m.time == truth.time
        assert by_quantity[Quantity.TEMPERATURE].metadata["rssi"] == truth.rssi
        assert json.loads(payload)  # what went over the wire is the server's JSON, unchanged
    assert [t.f_cnt for t in truths] == [0, 1, 2, 3, 4]
