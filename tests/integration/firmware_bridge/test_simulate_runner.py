"""`climastream simulate`: a fleet on ptys and MQTT, read back with pyserial and paho."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import serial

from climastream.stack import Stack
from firmware_bridge.codecs import CodecOptions, decode_payload
from firmware_bridge.model import Decoded
from firmware_bridge.serial_codecs.sds011 import Sds011Decoder
from firmware_bridge.simulators.runner import Fleet, load_fleet

pytestmark = pytest.mark.integration


def test_fleet_serves_a_pty_link_and_publishes_uplinks(stack: Stack, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {stack.config.mqtt_port}}}\n"
        "serial:\n"
        f"  - {{kind: sds011, link: {tmp_path}/tty-sds, period_s: 0.2, sensor_id: 4660}}\n"
        "lorawan:\n"
        "  - {dev_eui: 70B3D57ED0000001, network_server: chirpstack, period_s: 0.3}\n"
    )
    received: list[bytes] = []
    got = threading.Event()

    def on_message(client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(message.payload)
        got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", stack.config.mqtt_port)
    sub.subscribe("application/+/device/+/event/up", qos=1)
    sub.loop_start()
    fleet = Fleet(load_fleet(fleet_file))
    fleet.start()
    try:
        port = serial.Serial(str(tmp_path / "tty-sds"), 9600, timeout=0.5)
        decoder = Sds011Decoder()
        measurements = []
        deadline = time.monotonic() + 10
        while not measurements and time.monotonic() < deadline:
            for result in decoder.feed(port.read(64)):
                if isinstance(result, Decoded):
                    measurements.extend(result.measurements)
        port.close()
        assert measurements, "no SDS011 frame read through the pty link"
        assert measurements[0].device_id == "1234"  # sensor id 4660 = 0x1234
        assert got.wait(10), "no uplink reached the broker"
        [uplink] = decode_payload("chirpstack", received[0], CodecOptions(inner="cayenne"))
        assert isinstance(uplink, Decoded)
        assert "temperature" in {m.quantity.value for m in uplink.measurements}
        assert json.loads(received[0])["deviceInfo"]["devEui"] == "70b3d57ed0000001"
    finally:
        fleet.stop()
        sub.loop_stop()
        sub.disconnect()
    assert not (tmp_path / "tty-sds").exists()


def test_bad_fleet_file_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("serial:\n  - {kind: sds012, link: /tmp/x}\n")
    with pytest.raises(ValueError, match=r"serial\.0\.kind"):
        load_fleet(bad)
