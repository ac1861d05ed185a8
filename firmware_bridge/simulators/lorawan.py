"""Virtual LoRaWAN devices: Cayenne LPP uplinks in ChirpStack v4 and TTS v3 envelopes.

:meth:`VirtualLoRaWANDevice.uplink` builds the next uplink as the network server would
publish it (fCnt counting up, RSSI/SNR from a seeded radio model, faults applied) and
returns ``(topic, document, truth)``; :func:`publish_uplinks` sends them through a real
MQTT broker with paho-mqtt's synchronous client.
"""

from __future__ import annotations

import base64
import json
import math
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from firmware_bridge.lorawan.cayenne import encodable_range, encode_cayenne
from firmware_bridge.simulators.signals import Clock, DiurnalTemperature, Faults

NetworkServer = Literal["chirpstack", "tts"]

#: full scale of the two LPP records, where a spike saturates
_LIMITS = (encodable_range("temperature"), encodable_range("humidity"))


@dataclass(frozen=True, slots=True)
class UplinkTruth:
    """What the device really measured and how it was received, for test assertions."""

    dev_eui: str
    f_cnt: int
    temperature: float
    humidity: float
    rssi: int
    snr: float
    time: datetime


@dataclass
class VirtualLoRaWANDevice:
    """A temperature/humidity node: channel 1 temperature (0.1 °C), channel 2 humidity (0.5 %)."""

    dev_eui: str
    network_server: NetworkServer = "chirpstack"
    application_id: str = "climastream"
    signal: DiurnalTemperature = field(default_factory=DiurnalTemperature)
    seed: int = 0
    clock: Clock = field(default=lambda: datetime.now(UTC))
    faults: Faults = field(default_factory=Faults)
    distance_m: float = 800.0
    f_cnt: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._last: tuple[float, ...] | None = None

    def uplink(self) -> tuple[str, dict[str, Any], UplinkTruth] | None:
        """The next uplink, or None on a dropout fault (fCnt still advances, as on air)."""
        when = self.clock()
        raw = (self.signal.value(when, self.rng), 0.0)
        raw = (raw[0], min(100.0, max(0.0, 85 - 1.8 * (raw[0] - 10) + self.rng.gauss(0, 1))))
        values = self.faults.apply(raw, self._last, when, self.rng, _LIMITS)
        f_cnt = self.f_cnt
        self.f_cnt = (self.f_cnt + 1) % 2**32
        if values is None:
            return None
        self._last = values
        temperature = round(values[0], 1)
        humidity = round(values[1] * 2) / 2
        payload = encode_cayenne([(1, "temperature", [temperature]), (2, "humidity", [humidity])])
        # log-distance path loss (14 dBm EIRP, 40 dB at 1 m, exponent 2.7) with 3 dB shadowing:
        # about -104 dBm at 800 m in a city
        path_loss = 40 + 27 * math.log10(max(1.0, self.distance_m))
        rssi = round(14 - path_loss + self.rng.gauss(0, 3))
        snr = round(max(-20.0, min(12.0, (rssi + 120) / 2 + self.rng.gauss(0, 1.5))), 1)
        truth = UplinkTruth(self.dev_eui.lower(), f_cnt, temperature, humidity, rssi, snr, when)
        stamp = when.isoformat().replace("+00:00", "Z")
        data = base64.b64encode(payload).decode()
        if self.network_server == "chirpstack":
            topic = f"application/{self.application_id}/device/{self.dev_eui.lower()}/event/up"
            document: dict[str, Any] = {
                "deduplicationId": str(uuid.UUID(int=self.rng.getrandbits(128))),
                "time": stamp,
                "deviceInfo": {
                    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
                    "tenantName": "City",
                    "applicationId": self.application_id,
                    "applicationName": "climate",
                    "deviceProfileName": "cayenne-th",
                    "deviceName": f"th-{self.dev_eui[-4:].lower()}",
                    "devEui": self.dev_eui.lower(),
                    "tags": {},
                },
                "devAddr": f"{self.rng.getrandbits(32):08x}",
                "adr": True,
                "dr": 5,
                "fCnt": f_cnt,
                "fPort": 1,
                "confirmed": False,
                "data": data,
                "rxInfo": [
                    {
                        "gatewayId": "0016c001ff10a235",
                        "uplinkId": self.rng.getrandbits(16),
                        "rssi": rssi,
                        "snr": snr,
                        "channel": 2,
                        "context": "AAAAAA==",
                        "crcStatus": "CRC_OK",
                    }
                ],
                "txInfo": {
                    "frequency": 868500000,
                    "modulation": {
                        "lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}
                    },
                },
            }
        else:
            topic = f"v3/{self.application_id}@ttn/devices/eui-{self.dev_eui.lower()}/up"
            document = {
                "end_device_ids": {
                    "device_id": f"eui-{self.dev_eui.lower()}",
                    "application_ids": {"application_id": self.application_id},
                    "dev_eui": self.dev_eui.upper(),
                    "join_eui": "0000000000000000",
                    "dev_addr": f"{self.rng.getrandbits(32):08X}",
                },
                "correlation_ids": [f"as:up:{self.rng.getrandbits(64):016x}"],
                "received_at": stamp,
                "uplink_message": {
                    "session_key_id": "AXA50...",
                    "f_port": 1,
                    "f_cnt": f_cnt,
                    "frm_payload": data,
                    "rx_metadata": [
                        {
                            "gateway_ids": {"gateway_id": "city-gw-01", "eui": "B827EBFFFE000001"},
                            "time": stamp,
                            "rssi": rssi,
                            "channel_rssi": rssi,
                            "snr": snr,
                        }
                    ],
                    "settings": {
                        "data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}},
                        "frequency": "868500000",
                    },
                    "received_at": stamp,
                    "consumed_airtime": "0.061696s",
                },
            }
        return topic, document, truth


def publish_uplinks(
    host: str,
    port: int,
    uplinks: Iterable[tuple[str, dict[str, Any]]],
    *,
    qos: int = 1,
    timeout_s: float = 10.0,
) -> int:
    """Publish ``(topic, document)`` pairs with paho-mqtt; return how many were acknowledged.

    Raises ConnectionError when the broker cannot be reached, TimeoutError when a publish is
    not acknowledged within ``timeout_s``.
    """
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{uuid.uuid4().hex[:8]}")
    if client.connect(host, port, keepalive=30) != mqtt.MQTT_ERR_SUCCESS:
        raise ConnectionError(f"cannot connect to MQTT broker {host}:{port}")
    client.loop_start()
    sent = 0
    try:
        for topic, document in uplinks:
            info = client.publish(topic, json.dumps(document), qos=qos)
            info.wait_for_publish(timeout=timeout_s)
            if not info.is_published():
                raise TimeoutError(f"publish to {topic} not acknowledged within {timeout_s} s")
            sent += 1
    finally:
        client.disconnect()
        client.loop_stop()
    return sent
