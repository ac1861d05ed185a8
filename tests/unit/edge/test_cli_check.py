"""``climastream edge check`` validates, loads models, prints decoded readings, sends nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "climastream.cli",
            "edge",
            "check",
            "--config",
            str(config),
            "--count",
            "5",
            "--timeout",
            "10",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def _demo_gateway_without_devices(tmp_path: Path) -> Path:
    """The demo gateway with only its simulated source: the serial and MQTT sources need
    devices and a broker, which unit tests do not have."""
    config = yaml.safe_load((ROOT / "deploy/local/demo-gateway.yaml").read_text())
    config["sources"] = [s for s in config["sources"] if s["kind"] == "simulated"]
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_prints_readings_of_the_demo_gateway(tmp_path: Path) -> None:
    out = _check(_demo_gateway_without_devices(tmp_path))
    assert out.returncode == 0, out.stderr
    readings = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(readings) >= 5
    assert {r["gateway_id"] for r in readings} == {"gw-demo-1"}
    assert "model sensor-anomaly (sensor-anomaly:" in out.stderr
    assert "source street-sensors: up" in out.stderr


def test_check_fails_naming_a_source_that_cannot_be_opened(tmp_path: Path) -> None:
    config = yaml.safe_load(_demo_gateway_without_devices(tmp_path).read_text())
    config["sources"].append(
        {
            "kind": "serial",
            "name": "unplugged",
            "port": str(tmp_path / "no-tty"),
            "codec": "sds011",
            "device_id": "sds-1",
        }
    )
    path = tmp_path / "gw-unplugged.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _check(path)
    assert out.returncode != 0
    assert "unplugged" in out.stderr
    assert "source unplugged: connecting, 0 readings (" in out.stderr
    assert "No such file or directory" in out.stderr  # the reason, not only the state
    # --count bounds what is printed, even though a read can decode more
    assert len(out.stdout.splitlines()) == 5


def test_a_source_that_cannot_be_built_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    config = yaml.safe_load(_demo_gateway_without_devices(tmp_path).read_text())
    config["sources"][0]["devices"][0]["quantities"] = ["wind_speed"]
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _check(path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "the simulator cannot produce ['wind_speed']" in out.stderr


def test_check_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "gw.yaml"
    bad.write_text("gateway_id: gw1\nbatch_max_readings: 0\nsources: []\n")
    out = _check(bad)
    assert out.returncode == 2
    assert "batch_max_readings: Input should be greater than or equal to 1" in out.stderr
    assert "sources: " in out.stderr


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("metrics", "listen", 9108), ("buffer", "backend", "sqllite")],
)
def test_check_refuses_what_run_refuses_in_the_keys_it_overrides(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    """check swaps in a memory buffer and no metrics endpoint; the keys it replaces are
    still validated as written, or check would pass a file `edge run` then refuses."""
    config = yaml.safe_load(_demo_gateway_without_devices(tmp_path).read_text())
    config.setdefault(section, {})[key] = value
    path = tmp_path / "gw-bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _check(path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"{section}.{key}: " in out.stderr
    assert ": ok (gateway" not in out.stderr


class _FakeMqttClient:
    """aiomqtt.Client as the MQTT source uses it: the broker holds a backlog of QoS-1
    uplinks for the service's persistent session, and ``check`` must not take them."""

    made: ClassVar[list[_FakeMqttClient]] = []

    def __init__(self, host: str, port: int, *, identifier: str, clean_session: bool, **_: Any):
        self.identifier = identifier
        self.clean_session = clean_session
        self.acked: list[int] = []
        self._client = types.SimpleNamespace(
            manual_ack_set=lambda on: None, ack=lambda mid, qos: self.acked.append(mid)
        )
        self.messages = _FakeMessages(
            [
                types.SimpleNamespace(
                    mid=i,
                    qos=1,
                    topic="sensors/dev1",
                    payload=json.dumps([{"bn": "dev1:", "n": "temp", "u": "Cel", "v": 20}]),
                )
                for i in range(50)
            ]
        )
        _FakeMqttClient.made.append(self)

    async def __aenter__(self) -> _FakeMqttClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def subscribe(self, topic: str, qos: int) -> None:
        return None


class _FakeMessages(list[Any]):
    def __aiter__(self) -> _FakeMessages:
        return self

    async def __anext__(self) -> Any:
        return self.pop(0)


async def test_check_never_uses_the_services_persistent_mqtt_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``check`` acked (and so discarded) what the service's session held, connecting with
    the service's own client id: those uplinks never reached Kafka, uncounted."""
    import aiomqtt

    from edge.cli import _check_sources
    from edge.config import GatewayConfig, MqttSourceConfig
    from edge.sources.mqtt_source import MqttSource

    monkeypatch.setattr(aiomqtt, "Client", _FakeMqttClient)
    _FakeMqttClient.made.clear()
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "gw1",
            "metrics": {"listen": None},
            "buffer": {"backend": "memory"},
            "sources": [
                {"kind": "mqtt", "name": "lora", "topics": ["sensors/#"], "format": "senml"}
            ],
        }
    )

    assert await _check_sources(config, 3, 30.0) == 0

    (client,) = _FakeMqttClient.made
    assert client.identifier == f"climastream-gw1-lora-check-{os.getpid()}"
    assert client.clean_session  # nothing of the check stays on the broker
    # the service still owns the persistent session under its fixed id
    service = MqttSource(config.sources[0], gateway_id="gw1")  # type: ignore[arg-type]
    assert isinstance(config.sources[0], MqttSourceConfig)
    await service.start()
    await service._connect()
    assert _FakeMqttClient.made[-1].identifier == "climastream-gw1-lora"
    assert not _FakeMqttClient.made[-1].clean_session


class _SilentMqttClient(_FakeMqttClient):
    """Connects and subscribes, and no message ever comes (a topic filter that matches
    nothing the network server publishes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages = _SilentMessages()


class _SilentMessages(list[Any]):
    def __aiter__(self) -> _SilentMessages:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()


class _RetainedThenSilent(list[Any]):
    def __aiter__(self) -> _RetainedThenSilent:
        return self

    async def __anext__(self) -> Any:
        if self:
            return self.pop(0)
        await asyncio.Event().wait()


class _RetainedOnlyMqttClient(_FakeMqttClient):
    """The broker replays a topic's retained message at subscribe (from whenever it was
    published), then nothing new comes: check counted it as a live uplink and passed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages = _RetainedThenSilent(
            [
                types.SimpleNamespace(
                    mid=1,
                    qos=1,
                    retain=True,
                    topic="application/1/devices/0004a30b001c0530/event/up",
                    payload=json.dumps(
                        {
                            "deviceInfo": {"devEui": "0004a30b001c0530"},
                            "fCnt": 1,
                            "data": "AWcA6w==",
                        }
                    ),
                )
            ]
        )


class _RefusedMqttClient(_FakeMqttClient):
    async def __aenter__(self) -> _FakeMqttClient:
        raise ConnectionRefusedError(111, "Connection refused")


@pytest.mark.parametrize(
    ("client", "says"),
    [
        (
            _SilentMqttClient,
            "source lora: up, 0 readings (connected, but no new message on "
            "application/+/devices/+/event/up within 0.3 s: check the topic filters",
        ),
        (
            _RetainedOnlyMqttClient,
            "source lora: up, 0 readings, 1 retained messages skipped (the broker's stored "
            "last value of a topic, replayed at subscribe: not a new uplink; the service "
            "skips them too) (connected, but no new message on "
            "application/+/devices/+/event/up within 0.3 s",
        ),
        (
            _RefusedMqttClient,
            "source lora: connecting, 0 readings (cannot connect to mqtt.example:1884: "
            "[Errno 111] Connection refused)",
        ),
    ],
)
async def test_check_says_why_an_mqtt_source_gave_no_readings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], client: type, says: str
) -> None:
    import aiomqtt

    from edge.cli import _check_sources
    from edge.config import GatewayConfig

    monkeypatch.setattr(aiomqtt, "Client", client)
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "gw1",
            "metrics": {"listen": None},
            "buffer": {"backend": "memory"},
            "sources": [
                {
                    "kind": "mqtt",
                    "name": "lora",
                    "broker": {"host": "mqtt.example", "port": 1884},
                    "topics": ["application/+/devices/+/event/up"],
                    "format": "chirpstack",
                    "lorawan_codec": "cayenne",
                    "reconnect_min_s": 0.05,
                }
            ],
        }
    )
    assert await _check_sources(config, 3, 0.3) == 1
    assert says in capsys.readouterr().err
