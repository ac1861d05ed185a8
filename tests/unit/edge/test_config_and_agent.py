"""Config loading (keys named in errors, secrets), the agent's ingest path and the models."""

from __future__ import annotations

import asyncio
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from climastream.contract import (
    GatewayStatus,
    QualityFlag,
    Quantity,
    Reading,
    ReadingBatch,
    decode,
    encode,
)
from edge.agent import WARNED_MAX, Agent
from edge.buffer import Kind, MemoryBuffer
from edge.config import (
    ConfigError,
    GatewayConfig,
    KafkaConfig,
    ModelConfig,
    MqttSourceConfig,
    load_config,
)
from edge.inference import ModelRunner
from edge.sources import Sample

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "edge" / "models"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_example_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", "s3cret-value")
    config = load_config(ROOT / "deploy/pi/gateway.example.yaml")
    assert config.kafka.sasl_password is not None
    assert config.kafka.sasl_password.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(config)
    assert "s3cret-value" not in str(config.model_dump(mode="json"))
    assert load_config(ROOT / "deploy/local/demo-gateway.yaml").models[1].id == "pm-humidity"


def test_a_section_with_every_key_commented_out_means_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nkafka:\n#  bootstrap_servers: x:9092\nbuffer:\n#  max_bytes: 1MB\n"
        "metrics:\nmodels:\n"
        "sources: [{kind: simulated, devices: [{device_id: d, quantities: [temperature]}]}]\n"
    )
    config = load_config(path)
    default = GatewayConfig(gateway_id="gw1", sources=config.sources)
    assert (config.kafka, config.buffer, config.metrics, config.models) == (
        default.kafka,
        default.buffer,
        default.metrics,
        (),
    )


def test_missing_env_secret_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_PASSWORD", raising=False)
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nkafka: {sasl_password: '${NOPE_PASSWORD}'}\n"
        "sources: [{kind: simulated, devices: [{device_id: d, quantities: [temperature]}]}]\n"
    )
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password: environment variable NOPE"):
        load_config(path)


def test_env_default_applies_only_when_the_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nkafka: {bootstrap_servers: '127.0.0.1:${GW_TEST_PORT:-9092}'}\n"
        "sources: [{kind: simulated, devices: [{device_id: d, quantities: [temperature]}]}]\n"
    )
    monkeypatch.delenv("GW_TEST_PORT", raising=False)
    assert load_config(path).kafka.bootstrap_servers == "127.0.0.1:9092"
    monkeypatch.setenv("GW_TEST_PORT", "29092")
    assert load_config(path).kafka.bootstrap_servers == "127.0.0.1:29092"


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nkafka: {sasl_password_file: pw}\n"
        "sources: [{kind: simulated, devices: [{device_id: d, quantities: [temperature]}]}]\n"
    )
    password = load_config(path).kafka.sasl_password
    assert password is not None
    assert password.get_secret_value() == "from-file"


def test_errors_name_the_offending_key(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nsources:\n  - {kind: serial, name: s, port: /dev/x, codec: sds011,"
        " baudrate: -1, device_id: d}\n"
    )
    with pytest.raises(ConfigError, match=r"sources\.0\.baudrate: Input should be greater"):
        load_config(path)
    path.write_text(
        "gateway_id: gw1\nsources:\n  - {kind: serial, name: s, port: /x, codec: sds011}\n"
    )
    with pytest.raises(ConfigError, match="device_id is required"):
        load_config(path)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("buffer: {max_age: 0}\n", "buffer.max_age: Value error, must be a positive duration"),
        ("metrics: {listen: localhost}\n", "metrics.listen: Value error, expected host:port"),
        ("buffer: [a]\n", "buffer: Input should be a valid dictionary"),
        # true is not 1, nor a NaN a threshold, nor 'foo bar' a host
        ("batch_max_readings: true\n", "batch_max_readings: Value error, expected a number, got"),
        ("buffer: {fsync_window_s: false}\n", "buffer.fsync_window_s: Value error, expected a"),
        ("buffer: {max_age: true}\n", "buffer.max_age: Value error, expected a number, got true"),
        ("metrics: {listen: 'foo bar:80'}\n", r"metrics.listen: Value error, expected host:port"),
        (
            "models: [{id: m, path: m.onnx, quantity: temperature, inputs: [{}], "
            "outputs: [{kind: score, threshold: .nan}]}]\n",
            r"models.0.outputs.0.threshold: Input should be a finite number \(line 4\)",
        ),
    ],
)
def test_more_bad_keys_are_named(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nsources:\n  - {kind: simulated, devices: "
        "[{device_id: t1, quantities: [temperature]}]}\n" + extra
    )
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("device", ["serial", "mqtt", "simulated"])
def test_a_device_named_like_a_source_kind_keeps_its_key_in_errors(
    tmp_path: Path, device: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nsources:\n  - kind: mqtt\n    name: m\n    topics: [a]\n"
        f"    format: senml\n    devices:\n      {device}: {{zone: 'bad zone'}}\n"
    )
    with pytest.raises(ConfigError, match=rf"sources\.0\.devices\.{device}\.zone: .* \(line 8\)"):
        load_config(path)


def test_a_number_written_as_a_string_is_still_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``${VAR}`` expands to a string: a number given that way stays accepted."""
    monkeypatch.setenv("GW_TEST_BAUD", "115200")
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nbatch_max_readings: '250'\nsources:\n  - {kind: serial, name: s, "
        "port: /dev/x, codec: framed, baudrate: '${GW_TEST_BAUD}'}\n"
    )
    config = load_config(path)
    assert config.batch_max_readings == 250
    assert config.sources[0].baudrate == 115200  # type: ignore[union-attr]


def test_overriding_inside_a_section_that_is_not_a_mapping_names_it(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nbuffer: [a]\nsources:\n  - {kind: simulated, devices: "
        "[{device_id: t1, quantities: [temperature]}]}\n"
    )
    with pytest.raises(ConfigError, match="buffer: expected a mapping of settings, got list"):
        load_config(path, {"buffer.path": "/tmp/x.db"})
    path.write_text(path.read_text().replace("buffer: [a]", "buffer:"))
    assert load_config(path, {"buffer.path": "/tmp/x.db"}).buffer.path == Path("/tmp/x.db")


def test_ambiguous_configs_are_refused_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    source = (
        "sources:\n  - {kind: simulated, devices: [{device_id: t1, quantities: [temperature]}]}\n"
    )
    path.write_text("gateway_id: gw1\nbuffer:\n  path: /a.db\n  path: /b.db\n" + source)
    with pytest.raises(ConfigError, match=r"found key 'path' a second time \(first on line 3\)"):
        load_config(path)
    path.write_text("gateway_id: gw1\nbuffer: {path: /a.db, path: /b.db}\n" + source)
    with pytest.raises(ConfigError, match=r"found key 'path' a second time \(first on line 2\)"):
        load_config(path)
    (tmp_path / "pw").write_text("secret\n")
    path.write_text(
        "gateway_id: gw1\nkafka: {sasl_mechanism: PLAIN, sasl_username: u, sasl_password: x, "
        "sasl_password_file: pw}\n" + source
    )
    with pytest.raises(ConfigError, match="give either sasl_password or sasl_password_file"):
        load_config(path)
    path.write_text(
        "gateway_id: gw1\nsources:\n  - {kind: serial, name: s, port: /x, codec: framed, "
        "reconnect_min_s: 40, reconnect_max_s: 10}\n"
    )
    with pytest.raises(ConfigError, match=r"reconnect_min_s \(40\) is larger than"):
        load_config(path)


_SIM = "  - {kind: simulated, devices: [{device_id: %s, quantities: [temperature]}]}\n"
_FRAMED = "  - {kind: serial, name: %s, port: /dev/%s, codec: framed, device_id: %s}\n"
_MQTT = "  - {kind: mqtt, name: %s, topics: [t/%s], format: %s, %sdevices: {%s: {zone: z}}}\n"
_LORA = "lorawan_codec: cayenne, "


@pytest.mark.parametrize(
    ("sources", "first", "second"),
    [
        (  # two framed nodes told to be node-1: both number their frames 7 -> seq 1792
            _FRAMED % ("a", "ttyUSB0", "node-1") + _FRAMED % ("b", "ttyUSB1", "node-1"),
            r"sources\.0\.device_id \(line 3\)",
            r"sources\.1\.device_id \(line 4\)",
        ),
        (
            _SIM % "node-1" + _FRAMED % ("b", "ttyUSB1", "node-1"),
            r"sources\.0\.devices\.0\.device_id \(line 3\)",
            r"sources\.1\.device_id \(line 4\)",
        ),
        (  # a device of its own on a serial port, and the same id publishing over MQTT
            _FRAMED % ("a", "ttyUSB0", "node-1") + _MQTT % ("m", "a", "senml", "", "node-1"),
            r"sources\.0\.device_id \(line 3\)",
            r"sources\.1\.devices\.node-1 \(line 4\)",
        ),
        (  # a LoRaWAN device's readings carry its DevEUI in lower case
            _MQTT % ("m", "a", "chirpstack", _LORA, "A84041000181C23E")
            + _FRAMED % ("a", "ttyUSB0", "a84041000181c23e"),
            r"sources\.0\.devices\.A84041000181C23E \(line 3\)",
            r"sources\.1\.device_id \(line 4\)",
        ),
    ],
)
def test_one_device_id_for_two_devices_is_refused_naming_both(
    tmp_path: Path, sources: str, first: str, second: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("gateway_id: gw1\nsources:\n" + sources)
    with pytest.raises(
        ConfigError, match=rf"'[\w-]+' is given to two devices, at {first} and at {second}"
    ):
        load_config(path)


def test_a_dev_eui_key_matches_the_readings_in_any_case(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nsources:\n" + _MQTT % ("m", "a", "tts", _LORA, "A84041000181C23E")
    )
    (source,) = load_config(path).sources
    assert isinstance(source, MqttSourceConfig)
    assert list(source.devices) == ["A84041000181C23E"]  # errors name it as written
    assert source.device_meta()["a84041000181c23e"].zone == "z"  # readings name it so
    path.write_text(
        "gateway_id: gw1\nsources:\n  - {kind: mqtt, name: m, topics: [t], format: tts, "
        + _LORA
        + "devices: {A84041000181C23E: {zone: z}, a84041000181c23e: {zone: y}}}\n"
    )
    with pytest.raises(ConfigError, match=r"DevEUI 'a84041000181c23e' is given twice"):
        load_config(path)


def test_one_device_in_two_sources_that_only_hear_it_is_allowed(tmp_path: Path) -> None:
    """Two MQTT sources listing one DevEUI: one device that both may hear, not two."""
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nsources:\n"
        + _MQTT % ("m1", "a", "chirpstack", _LORA, "a84041000181c23e")
        + _MQTT % ("m2", "b", "tts", _LORA, "a84041000181c23e")
        + _FRAMED % ("a", "ttyUSB0", "node-1")
        + _SIM % "sim-1"
    )
    assert len(load_config(path).sources) == 4


@pytest.mark.parametrize(
    "kafka",
    [
        "kafka:\n  sasl_password: hunter2-old\n  sasl_password: hunter2-new\n",
        "kafka:\n  sasl_password: hunter2: tail\n",
        "kafka:\n  ssl_password: 'hunter2\n  linger_ms: 5\n",
    ],
)
def test_a_yaml_error_never_prints_a_secret(tmp_path: Path, kafka: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text("gateway_id: gw1\n" + kafka)
    with pytest.raises(ConfigError, match=r"gw.yaml: not valid YAML") as caught:
        load_config(path)
    assert "hunter2" not in str(caught.value)
    assert "line 3, column" in str(caught.value)


def test_a_secret_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "pw").write_bytes(b"ab\xff")
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nkafka: {sasl_mechanism: PLAIN, sasl_username: u, "
        "sasl_password_file: pw}\nsources:\n  - {kind: simulated, devices: "
        "[{device_id: t1, quantities: [temperature]}]}\n"
    )
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file: secret file is not UTF-8"):
        load_config(path)


def _config(models: list[dict[str, Any]] | None = None) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway_id": "gw1",
            "zone": "centre",
            "metrics": {"listen": None},
            "models": models or [],
            "sources": [
                {"kind": "simulated", "devices": [{"device_id": "x", "quantities": ["no2"]}]}
            ],
        }
    )


def _agent(
    config: GatewayConfig, models: list[ModelRunner] | None = None, *, synced: bool = True
) -> Agent:
    agent = Agent(config, sources=[], uplink=None, models=models, clock_synced=lambda: synced)  # type: ignore[arg-type]
    agent.buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent.models = models or []
    agent.clock = lambda: NOW
    return agent


def _sample(
    device: str, quantity: Quantity, value: float, unit: str, seq: int | None = None
) -> Sample:
    return Sample(device, quantity, value, unit, NOW - timedelta(seconds=1), seq=seq)


def _stored(agent: Agent) -> list[Reading]:
    assert agent.buffer is not None
    return [
        decode(payload, Reading, now=NOW)
        for p in agent.buffer.take(Kind.READING, 1000)
        for payload in p.payloads()
    ]


def test_invalid_readings_of_ever_new_devices_leave_bounded_state() -> None:
    """Each (device, error) is logged once; remembering that must not grow with every
    device id a gateway hears in months (JSON devices are named by their MQTT topic)."""
    agent = _agent(_config())
    for batch in range(11):
        agent.ingest(
            [
                _sample(f"d-{batch}-{i}", Quantity.TEMPERATURE, 999.0, "Cel")  # implausible
                for i in range(1000)
            ]
        )
    assert agent.counters.dropped == {"invalid_reading": 11_000}
    assert len(agent._warned) <= WARNED_MAX


def test_ingest_stores_the_contract_encoding_and_numbers_devices() -> None:
    agent = _agent(_config())
    agent.ingest(
        [
            _sample("a", Quantity.TEMPERATURE, 21.5, "Cel"),
            _sample("a", Quantity.RELATIVE_HUMIDITY, 55.0, "%RH"),
            _sample("b", Quantity.TEMPERATURE, 19.0, "Cel", seq=7),
            _sample("a", Quantity.TEMPERATURE, 999.0, "Cel"),  # implausible: counted
        ]
    )
    readings = _stored(agent)
    assert [(r.device_id, r.seq) for r in readings] == [("a", 0), ("a", 1), ("b", 7)]
    assert agent.counters.dropped == {"invalid_reading": 1}
    assert agent.counters.accepted == 3
    assert readings[0].zone == "centre"
    assert readings[0].gateway_id == "gw1"
    # the stored payload is byte for byte what the contract's own encoder produces
    from climastream.contract import encode

    assert agent.buffer is not None
    agent.buffer.release(Kind.READING)
    (first,) = agent.buffer.take(Kind.READING, 1)
    assert first.payload == encode(readings[0])
    # the chunk holds the payloads joined with ",": a ReadingBatch's readings array as is
    agent.buffer.release(Kind.READING)
    (chunk,) = agent.buffer.take(Kind.READING, 1000)
    assert chunk.payload == b",".join(encode(r) for r in readings)


def test_readings_the_gateway_stamped_before_ntp_sync_are_flagged_not_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Pi boots with fake-hwclock's time; until NTP syncs, a reading stamped with the
    gateway's receive time carries a wrong event time. It is stored flagged
    ``clock_unsynced`` (and counted); one with the device's own time is not flagged."""
    synced: list[bool | None] = [False]
    agent = Agent(_config(), sources=[], uplink=None, clock_synced=lambda: synced[0])  # type: ignore[arg-type]
    agent.buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent.clock = lambda: NOW
    stamped = _sample("a", Quantity.TEMPERATURE, 21.5, "Cel")._replace(gateway_time=True)
    own_time = _sample("b", Quantity.TEMPERATURE, 19.0, "Cel")
    with caplog.at_level("WARNING"):
        agent.ingest([stamped, own_time])
    assert "not synchronized" in caplog.text
    synced[0] = True  # NTP stepped the clock
    agent.ingest([stamped._replace(device_id="c")])
    synced[0] = None  # a system that cannot tell: nothing to flag
    agent.ingest([stamped._replace(device_id="d")])
    readings = {r.device_id: r.quality for r in _stored(agent)}
    assert readings == {"a": (QualityFlag.CLOCK_UNSYNCED,), "b": (), "c": (), "d": ()}
    assert agent.counters.clock_unsynced == 1
    assert agent.counters.accepted == 4
    assert agent.clock_synchronized is None


@pytest.mark.parametrize("synced", [False, True, None])
def test_the_status_says_whether_the_clock_that_stamped_it_was_synchronized(
    synced: bool | None,
) -> None:
    """After a power cut the status's ``time`` is fake-hwclock's until NTP syncs: the cloud
    is told, so it does not take that time for when the gateway came back."""
    agent = Agent(_config(), sources=[], uplink=None, clock_synced=lambda: synced)  # type: ignore[arg-type]
    agent.buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent.clock = lambda: NOW - timedelta(hours=2)
    status = agent.snapshot()
    assert status.clock_synchronized is synced
    assert status.time == NOW - timedelta(hours=2)
    decoded = decode(encode(status), GatewayStatus, now=NOW)
    assert decoded.clock_synchronized is synced


@pytest.mark.parametrize("synced", [False, True])
def test_device_time_ahead_of_an_unsynchronized_gateway_clock_is_kept(synced: bool) -> None:
    """After a power cut fake-hwclock restores an old time: the gateway clock is days
    behind until NTP, and a device's own correct time looks days "in the future". That
    bound is the gateway's to apply only while its clock is synchronized."""
    agent = Agent(_config(), sources=[], uplink=None, clock_synced=lambda: synced)  # type: ignore[arg-type]
    agent.buffer = MemoryBuffer(max_bytes=10**7, max_age_s=3600)
    agent.clock = lambda: NOW - timedelta(days=3)
    device_time = Sample("lora-1", Quantity.TEMPERATURE, 20.0, "Cel", NOW, seq=256)
    far_ahead = device_time._replace(event_time=NOW + timedelta(days=500), seq=512)
    agent.ingest([device_time, far_ahead])
    if synced:  # a synchronized clock is right: both are in the future, refused
        assert agent.counters.dropped == {"invalid_reading": 2}
    else:
        stored = _stored(agent)
        assert [(r.seq, r.event_time, r.quality) for r in stored] == [(256, NOW, ())]
        assert agent.counters.dropped == {"invalid_reading": 1}  # past any gateway's lag


def test_samples_say_whether_the_gateway_stamped_them() -> None:
    from edge.sources.convert import to_samples
    from firmware_bridge.model import Decoded, measurement

    received = NOW - timedelta(seconds=5)
    own = measurement(Quantity.TEMPERATURE, 20.0, "Cel", device_id="a", time=NOW)
    none = measurement(Quantity.TEMPERATURE, 21.0, "Cel", device_id="b")
    samples = to_samples([Decoded((own, none))], errors={}, now=lambda: received)
    assert [(s.device_id, s.event_time, s.gateway_time) for s in samples] == [
        ("a", NOW, False),
        ("b", received, True),
    ]
    # SenML: a time relative to "now", or none, is reckoned from the gateway's clock
    from firmware_bridge.mqtt.senml import decode_senml

    pack = b'[{"bn":"s1/","n":"temperature","v":20,"bt":%d},{"n":"temperature","v":21}]'
    absolute = decode_senml(pack % NOW.timestamp(), now=lambda: received)
    relative = decode_senml(pack % -30, now=lambda: received)
    samples = to_samples([absolute, relative], errors={}, now=lambda: received)
    assert [(s.event_time, s.gateway_time) for s in samples] == [
        (NOW, False),
        (NOW, False),
        (received - timedelta(seconds=30), True),
        (received - timedelta(seconds=30), True),
    ]


def test_a_batch_record_joins_chunks_into_one_reading_batch() -> None:
    agent = _agent(_config())
    agent.ingest([_sample("a", Quantity.TEMPERATURE, 20.0 + i, "Cel") for i in range(3)])
    agent.ingest([_sample("b", Quantity.TEMPERATURE, 10.0 + i, "Cel") for i in range(3)])
    assert agent.buffer is not None
    pending = agent.buffer.take(Kind.READING, 5)  # a whole chunk and part of the next
    assert [p.count for p in pending] == [3, 2]
    record = agent._batch_record(pending)
    assert record == agent._prefix + b",".join(p.payload for p in pending) + b"]}"
    batch = decode(record, ReadingBatch, now=NOW)
    assert batch.gateway_id == "gw1"
    assert [(r.device_id, r.seq) for r in batch.readings] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
    ]


def _runner(model_id: str, **kwargs: Any) -> ModelRunner:
    return ModelRunner(ModelConfig.model_validate({"id": model_id, **kwargs}))


def test_humidity_correction_derives_a_traceable_reading() -> None:
    runner = _runner(
        "pm-humidity",
        path=str(MODELS / "pm_humidity_correction.onnx"),
        devices=["pm-*"],
        quantity="pm2_5",
        inputs=[{"quantity": "pm2_5"}, {"quantity": "relative_humidity"}],
        outputs=[{"kind": "derive", "quantity": "pm2_5"}],
    )
    agent = _agent(_config(), [runner])
    agent.ingest(
        [
            _sample("pm-1", Quantity.RELATIVE_HUMIDITY, 95.0, "%RH"),
            _sample("pm-1", Quantity.PM2_5, 40.0, "ug/m3"),
            _sample("other", Quantity.PM2_5, 40.0, "ug/m3"),  # not in the device group
        ]
    )
    readings = {r.device_id: r for r in _stored(agent)}
    derived = readings["pm-1.corrected"]
    assert derived.model_id == runner.ref
    assert runner.ref.startswith("pm-humidity:")
    assert len(runner.ref.split(":")[1]) == 12
    assert derived.quality == (QualityFlag.DERIVED,)
    # kappa-Koehler at 95 % RH, kappa 0.4: growth 1 + (0.4/1.65)/(1/0.95 - 1) = 5.6
    assert 40.0 / 5.6 * 0.6 < derived.value < 40.0 / 5.6 * 1.6
    assert readings["pm-1"].value == 40.0
    assert readings["other"].model_id is None


def test_a_reading_derived_from_a_clock_unsynced_one_is_flagged_too() -> None:
    """A derived reading has its source's event time: a wrong one before NTP sync."""
    runner = _runner(
        "pm-humidity",
        path=str(MODELS / "pm_humidity_correction.onnx"),
        devices=["pm-*"],
        quantity="pm2_5",
        inputs=[{"quantity": "pm2_5"}, {"quantity": "relative_humidity"}],
        outputs=[{"kind": "derive", "quantity": "pm2_5"}],
    )
    agent = _agent(_config(), [runner], synced=False)
    agent.ingest(
        [
            _sample("pm-1", Quantity.RELATIVE_HUMIDITY, 95.0, "%RH")._replace(gateway_time=True),
            _sample("pm-1", Quantity.PM2_5, 40.0, "ug/m3")._replace(gateway_time=True),
        ]
    )
    readings = {r.device_id: r.quality for r in _stored(agent)}
    unsynced, derived = QualityFlag.CLOCK_UNSYNCED, QualityFlag.DERIVED
    assert readings == {"pm-1": (unsynced,), "pm-1.corrected": (derived, unsynced)}


def test_anomaly_scores_a_stuck_sensor_high_and_a_noisy_one_low() -> None:
    runner = _runner(
        "anomaly",
        path=str(MODELS / "sensor_anomaly.onnx"),
        quantity="temperature",
        inputs=[{"window": 16}],
        outputs=[{"kind": "score", "threshold": 0.9}],
    )
    import random

    rng = random.Random(3)
    samples = []
    for _ in range(16):
        samples.append(_sample("stuck", Quantity.TEMPERATURE, 21.0, "Cel"))
        samples.append(_sample("ok", Quantity.TEMPERATURE, 21.0 + rng.gauss(0, 0.3), "Cel"))
    agent = _agent(_config(), [runner])
    agent.ingest(samples)
    last = {r.device_id: r for r in _stored(agent)}
    assert runner.runs == 1  # one micro-batch for both devices
    assert last["stuck"].score is not None
    assert last["stuck"].score > 0.9
    assert QualityFlag.ANOMALY in last["stuck"].quality
    assert last["ok"].score is not None
    assert last["ok"].score < 0.5


def test_a_model_that_fails_to_load_flags_readings_and_they_still_flow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    runner = _runner(
        "broken", path=str(broken), quantity="temperature", inputs=[{}], outputs=[{"kind": "score"}]
    )
    assert runner.error is not None
    assert runner.failures == {"load": 1}
    agent = _agent(_config(), [runner])
    agent.ingest([_sample("a", Quantity.TEMPERATURE, 20.0, "Cel")])
    (reading,) = _stored(agent)
    assert reading.quality == (QualityFlag.MODEL_FAILED,)
    assert reading.model_id == runner.ref
    status = agent.snapshot()
    assert status.model_errors == {"broken": 1}


def test_a_model_that_fails_to_run_flags_the_batch() -> None:
    class Exploding:
        def get_inputs(self) -> list[Any]:
            class Input:
                name = "x"
                shape = (None, 1)

            return [Input()]

        def run(self, *_args: Any) -> Any:
            raise RuntimeError("boom")

    config = ModelConfig.model_validate(
        {
            "id": "m",
            "path": "none.onnx",
            "quantity": "temperature",
            "inputs": [{}],
            "outputs": [{"kind": "score"}],
        }
    )
    runner = ModelRunner(config, session_factory=lambda _p: Exploding())
    agent = _agent(_config(), [runner])
    agent.ingest(
        [
            _sample("a", Quantity.TEMPERATURE, 20.0, "Cel"),
            _sample("b", Quantity.TEMPERATURE, 21.0, "Cel"),
        ]
    )
    assert [r.quality for r in _stored(agent)] == [(QualityFlag.MODEL_FAILED,)] * 2
    assert runner.failures == {"run": 2}


def test_sd_notify_sends_a_datagram(tmp_path: Path) -> None:
    import socket

    from edge import systemd

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert systemd.notify("READY=1", path)
        assert sock.recv(64) == b"READY=1"
    assert not systemd.notify("READY=1", "")


async def test_status_reports_outage_capacity_from_the_ingest_rate() -> None:
    agent = _agent(_config())
    agent._worker.shutdown()  # not used here
    agent.ingest([_sample("a", Quantity.TEMPERATURE, 20.0, "Cel")])
    agent.snapshot()
    await asyncio.sleep(0.05)
    agent.ingest([_sample("a", Quantity.TEMPERATURE, 20.0, "Cel") for _ in range(100)])
    status = agent.snapshot()
    assert status.outage_capacity_hours is not None
    assert 0 < status.outage_capacity_hours <= 7 * 24
    assert status.buffer_depth == 101


def test_outage_capacity_is_steady_for_sensors_that_report_every_few_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One reading every 300 s, a status every second (as housekeeping builds it): the rate
    averaged over ~30 s made the published capacity swing between 7 h and 168 h while the
    truth was about 70 h. The rate is now the last hour's (the run so far, if shorter)."""
    clock = [1000.0]
    monkeypatch.setattr("edge.agent.time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    agent = _agent(_config())
    agent._worker.shutdown()  # not used here
    agent.buffer = MemoryBuffer(max_bytes=262_144, max_age_s=7 * 86400)
    start_up: list[tuple[float, float]] = []  # (published, true) in the first hour
    steady: list[tuple[float, float]] = []
    per_reading = 0
    for second in range(3 * 3600):
        if second % 300 == 0:
            before = agent._bytes_in
            agent.ingest([_sample("a", Quantity.TEMPERATURE, 20.0, "Cel", seq=second)])
            per_reading = agent._bytes_in - before
        clock[0] += 1
        status = agent.snapshot()
        free = status.buffer_capacity_bytes - status.buffer_bytes
        true_h = free / (per_reading / 300) / 3600
        if second % 30 == 0 and second >= 600:  # what status_interval_s=30 publishes
            assert status.outage_capacity_hours is not None
            (start_up if second < 3600 else steady).append((status.outage_capacity_hours, true_h))

    assert 60 < steady[0][1] < 80
    for published, true_h in steady:
        assert abs(published - true_h) / true_h < 0.1  # one reading more or less in the hour
    for published, true_h in start_up:  # errs short while it has seen little, never long
        assert published < true_h * 1.1


def test_bad_model_outputs_flag_the_reading_and_good_ones_apply() -> None:
    """Per output column: non-finite or implausible values flag, never store, the reading."""

    class Scripted:
        """Returns one scripted row per input row: [score, corrected pm2.5]."""

        def __init__(self, rows: list[list[float]]) -> None:
            self.rows = rows

        def get_inputs(self) -> list[Any]:
            class Input:
                name = "x"
                shape = (None, 1)

            return [Input()]

        def run(self, *_args: Any) -> Any:
            import numpy as np

            return [np.asarray(self.rows, np.float32)]

    config = ModelConfig.model_validate(
        {
            "id": "m",
            "path": "none.onnx",
            "quantity": "pm2_5",
            "inputs": [{}],
            "outputs": [
                {"kind": "score", "column": 0, "threshold": 0.8},
                {"kind": "correct", "column": 1},
                {"kind": "derive", "column": 2, "quantity": "pm2_5"},  # no such column
            ],
        }
    )
    nan = float("nan")
    session = Scripted([[0.9, 12.5], [0.1, -5.0], [nan, 1e9], [0.8, nan]])
    runner = ModelRunner(config, session_factory=lambda _p: session)
    agent = _agent(_config(), [runner])
    agent.ingest([_sample(f"d{i}", Quantity.PM2_5, 20.0, "ug/m3") for i in range(4)])
    got = {r.device_id: r for r in _stored(agent)}
    assert set(got) == {"d0", "d1", "d2", "d3"}  # the missing derive column derives nothing
    failed, anomaly, corrected = (
        QualityFlag.MODEL_FAILED,
        QualityFlag.ANOMALY,
        QualityFlag.CORRECTED,
    )
    assert (got["d0"].score, got["d0"].value) == (pytest.approx(0.9), 12.5)
    assert got["d0"].quality == (anomaly, corrected, failed)
    assert (got["d1"].score, got["d1"].value) == (pytest.approx(0.1), 20.0)  # -5 implausible
    assert got["d1"].quality == (failed,)
    assert (got["d2"].score, got["d2"].value) == (None, 20.0)
    assert got["d2"].quality == (failed,)
    assert (got["d3"].score, got["d3"].value) == (pytest.approx(0.8), 20.0)  # >= threshold
    assert got["d3"].quality == (anomaly, failed)
    assert all(r.model_id == runner.ref for r in got.values())
    assert runner.failures == {"bad_output": 1 + 2 + 3 + 2}  # per reading, per output


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ("kafka://k.example:9092", "is a URL"),
        ("k.example:0", "port must be a number from 1 to 65535"),
        ("k.example:http", "port must be a number from 1 to 65535"),
        ("k1:9092,", "has an empty entry"),
        ("k 1:9092", "expected host:port"),
    ],
)
def test_broker_addresses_that_no_client_could_use_are_refused(servers: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        KafkaConfig(bootstrap_servers=servers)


@pytest.mark.parametrize(
    "servers", ["k.example:9093", "10.0.0.5:9092,10.0.0.6:9092", "[::1]:9092", "k"]
)
def test_broker_addresses_as_kafka_clients_take_them(servers: str) -> None:
    assert KafkaConfig(bootstrap_servers=servers).bootstrap_servers == servers


def test_the_uplink_compresses_with_zstd_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """zstd by default, and its codec installed with the edge extra; a codec whose library
    is missing is refused at start, naming the key and the package."""
    import aiokafka.codec

    from edge.uplink import check_compression

    assert KafkaConfig().compression == "zstd"
    for codec in ("zstd", "gzip", "lz4", "snappy", "none"):
        check_compression(codec)  # all installed: nothing raised
    # the round trip aiokafka makes of every record batch, with the installed library
    payload = b'{"gateway_id":"gw","readings":[]}' * 100
    assert aiokafka.codec.zstd_decode(aiokafka.codec.zstd_encode(payload)) == payload
    monkeypatch.setattr(aiokafka.codec, "has_zstd", lambda: False)
    with pytest.raises(ValueError, match=r"kafka\.compression: zstd needs .*pip install cramjam"):
        check_compression("zstd")


def test_a_json_mapping_template_that_cannot_work_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\nsources:\n  - {kind: mqtt, name: m, topics: ['city/#'], format: json,"
        " mapping: {topic: 'city/{zone-id}/{device_id}', device_id: '{device_id}',"
        " fields: {t: {quantity: temperature, unit: Cel}}}}\n"
    )
    with pytest.raises(
        ConfigError, match=r"sources\.0\.mapping: Value error, topic: variable '\{zone-id\}'"
    ):
        load_config(path)


class _Constant:
    """A session that scores every row 0.25 (one output column)."""

    def get_inputs(self) -> list[Any]:
        class Input:
            name = "x"
            shape = (None, 1)

        return [Input()]

    def run(self, _outputs: Any, feeds: dict[str, Any]) -> Any:
        import numpy as np

        return [np.full((len(feeds["x"]), 1), 0.25, np.float32)]


def test_a_model_id_the_config_accepts_always_fits_the_readings(tmp_path: Path) -> None:
    """``model_id`` is ``<id>:<12 hex>``: an id the config accepts never makes the readings
    it touches invalid; a longer one is refused naming the key."""
    path = tmp_path / "gw.yaml"
    (tmp_path / "m.onnx").write_bytes(b"any bytes: the session is a stand-in")
    model = "models:\n  - {id: %s, path: " + str(tmp_path / "m.onnx")
    model += ", quantity: temperature, inputs: [{}], outputs: [{kind: score}]}\n"
    source = "sources: [{kind: simulated, devices: [{device_id: d, quantities: [temperature]}]}]\n"
    path.write_text("gateway_id: gw1\n" + model % ("m" * 116) + source)
    with pytest.raises(ConfigError, match=r"models\.0\.id: Value error, at most 115 .* \(line 3\)"):
        load_config(path)
    path.write_text("gateway_id: gw1\n" + model % ("m" * 115) + source)
    (config,) = load_config(path).models
    runner = ModelRunner(config, session_factory=lambda _p: _Constant())
    agent = _agent(_config(), [runner])
    assert agent.ingest([_sample(d, Quantity.TEMPERATURE, 20.0, "Cel") for d in "ab"]) == 2
    assert agent.counters.dropped == {}
    assert [len(r.model_id or "") for r in _stored(agent)] == [128, 128]


def test_a_derived_id_too_long_for_the_contract_flags_instead_of_dropping() -> None:
    config = ModelConfig.model_validate(
        {
            "id": "m",
            "path": "none.onnx",
            "quantity": "pm2_5",
            "inputs": [{}],
            "outputs": [{"kind": "derive", "quantity": "pm2_5"}],
        }
    )
    runner = ModelRunner(config, session_factory=lambda _p: _Constant())
    agent = _agent(_config(), [runner])
    long_id = "p" * 120  # + ".corrected": 130 characters, past the contract's 128
    agent.ingest(
        [
            _sample(long_id, Quantity.PM2_5, 20.0, "ug/m3"),
            _sample("pm", Quantity.PM2_5, 20.0, "ug/m3"),
        ]
    )
    got = {r.device_id: r for r in _stored(agent)}
    assert agent.counters.dropped == {}
    assert set(got) == {long_id, "pm", "pm.corrected"}
    assert got[long_id].quality == (QualityFlag.MODEL_FAILED,)
    assert got[long_id].model_id == runner.ref
    assert runner.failures == {"derive_id": 1}


def test_a_window_with_a_gap_longer_than_max_age_is_missing() -> None:
    """Three values, then one three days later: the window is not those four (max_age_s
    900). The series starts again after the gap, and runs once it is a window long."""
    fed: list[list[float]] = []

    class Recording:
        def get_inputs(self) -> list[Any]:
            class Input:
                name = "x"
                shape = (None, 4)

            return [Input()]

        def run(self, _outputs: Any, feeds: dict[str, Any]) -> Any:
            import numpy as np

            fed.extend(feeds["x"].tolist())
            return [np.zeros((len(feeds["x"]), 1), np.float32)]

    now = [0.0]
    config = ModelConfig.model_validate(
        {
            "id": "m",
            "path": "none.onnx",
            "quantity": "temperature",
            "inputs": [{"window": 4, "max_age_s": 900}],
            "outputs": [{"kind": "score"}],
        }
    )
    runner = ModelRunner(config, session_factory=lambda _p: Recording(), clock=lambda: now[0])

    def reading(value: float) -> dict[str, Any]:
        return {"device_id": "a", "quantity": "temperature", "value": value, "seq": None}

    for value in (10.0, 10.5, 11.0):
        runner.process([reading(value)])
        now[0] += 60.0
    now[0] = 3 * 86400.0
    runner.process([reading(25.0)])
    assert fed == []  # not [10.0, 10.5, 11.0, 25.0]
    for value in (25.5, 26.0, 26.5):
        now[0] += 600.0
        runner.process([reading(value)])
    assert fed == [[25.0, 25.5, 26.0, 26.5]]
    now[0] += 901.0  # 26.5 was older than max_age_s when 27.0 came: missing again
    runner.process([reading(27.0)])
    assert len(fed) == 1


def test_the_state_of_devices_that_went_quiet_is_forgotten() -> None:
    """Devices come and go over months (LoRaWAN nodes replaced, JSON devices named by
    their topic): a series silent for longer than every ``max_age_s`` can no longer feed
    the model, so its state must not stay in memory for the rest of the run."""

    class Zeros:
        def get_inputs(self) -> list[Any]:
            class Input:
                name = "x"
                shape = (None, None)

            return [Input()]

        def run(self, _outputs: Any, feeds: dict[str, Any]) -> Any:
            import numpy as np

            return [np.zeros((len(feeds["x"]), 1), np.float32)]

    now = [0.0]
    config = ModelConfig.model_validate(
        {
            "id": "m",
            "path": "none.onnx",
            "devices": ["th-*"],
            "quantity": "temperature",
            "inputs": [
                {"window": 4, "max_age_s": 900},
                {"quantity": "relative_humidity", "max_age_s": 600},
            ],
            "outputs": [{"kind": "score"}],
        }
    )
    runner = ModelRunner(config, session_factory=lambda _p: Zeros(), clock=lambda: now[0])

    def reading(device: str, quantity: str) -> dict[str, Any]:
        return {"device_id": device, "quantity": quantity, "value": 20.0, "seq": None}

    scored = 0
    steps = 5000
    for step in range(steps):  # a new device every 10 s, each heard once; one steady
        batch = [
            reading("th-steady", "relative_humidity"),
            reading("th-steady", "temperature"),
            reading(f"th-{step}", "relative_humidity"),
            reading(f"th-{step}", "temperature"),
            reading(f"other-{step}", "temperature"),  # not in the group, still a series
        ]
        runner.process(batch)
        scored += "score" in batch[1]
        now[0] += 10.0
    # 15 001 series were seen; only those heard within two max_age_s (the longest, 900 s)
    # are kept: 3 per step for 180 steps, and the steady device's 2
    assert runner.series <= 3 * (2 * 900 // 10 + 1) + 2
    assert scored == steps - 3  # the steady device scored from its 4th value on, throughout


@pytest.mark.parametrize(
    ("output", "unused"),
    [
        ({"kind": "correct", "threshold": 0.5, "quantity": "pm2_5"}, "quantity, threshold"),
        ({"kind": "score", "device_suffix": ".x"}, "device_suffix"),
        ({"kind": "derive", "quantity": "pm2_5", "threshold": 0.9}, "threshold"),
    ],
)
def test_an_output_key_its_kind_does_not_use_is_refused(
    output: dict[str, Any], unused: str
) -> None:
    with pytest.raises(ValidationError, match=rf"{unused}: not used by a {output['kind']} output"):
        ModelConfig.model_validate(
            {"id": "m", "path": "m.onnx", "quantity": "pm2_5", "inputs": [{}], "outputs": [output]}
        )
