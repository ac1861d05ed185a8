"""Gateway configuration: one YAML file per gateway, validated at load time.

Errors name the offending key (``sources.2.cadence_s: ...``). Connections open only when the
agent starts, never while loading.

Secrets never sit in the file in clear text unless the installer puts them there:

* ``${VAR}`` anywhere in a string is replaced by the environment variable ``VAR``; a missing
  variable is an error naming the key (not an empty password); ``${VAR:-default}`` falls
  back to ``default`` instead;
* a secret key ``<name>_file: /path`` reads the secret from a file (systemd credentials,
  Docker/K8s secrets), stripping one trailing newline.

Secret values are :class:`pydantic.SecretStr`, so they print as ``**********`` in logs,
reprs and ``climastream edge check`` output.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from climastream import kafkasec
from climastream.contract import Location, Quantity, SafeId
from climastream.validation import error_lines, key_path
from climastream.yamlfile import ExpansionError, YamlFileError, expand_secrets, load_yaml


def _not_a_boolean(value: Any) -> Any:
    """``batch_max_readings: true`` is a slip, not 1 (pydantic would read it as 1). A number
    written as a string stays accepted: ``${PORT}`` expands to one."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_a_boolean)]
Float = Annotated[float, BeforeValidator(_not_a_boolean)]
Seconds = Annotated[Float, Field(gt=0, le=86400)]

#: keys that hold secrets; each also accepts ``<key>_file``
SECRET_KEYS = frozenset({"sasl_password", "password", "ssl_password"})


def _backoff_order(low: float, high: float) -> None:
    if low > high:
        raise ValueError(
            f"reconnect_min_s ({low:g}) is larger than reconnect_max_s ({high:g}): the "
            "backoff starts at the first and doubles up to the second"
        )


class ConfigError(ValueError):
    """The gateway config is invalid; the message names each offending key."""


class _Frozen(BaseModel):
    # the string under each field is its description: ``climastream edge config-reference``
    # and edge/CONFIG.md are generated from them
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


# --------------------------------------------------------------------------- sources


class SimulatedDevice(_Frozen):
    """One simulated device."""

    device_id: SafeId
    """The simulated device's id."""
    zone: SafeId | None = None
    """Its zone (default: the gateway's `zone`)."""
    location: Location | None = None
    """Its position, `{lat, lon}` in degrees."""
    quantities: Annotated[tuple[Quantity, ...], Field(min_length=1)]
    """What it measures, e.g. `[temperature, relative_humidity]`."""


class SimulatedSourceConfig(_Frozen):
    """Devices that exist only in software: for demos, tests and `--test` runs."""

    kind: Literal["simulated"] = "simulated"
    """Source type."""
    name: SafeId = "simulated"
    """Name of this source in logs, metrics and the gateway status."""
    cadence_s: Seconds = 1.0
    """Seconds between two samples of each device and quantity."""
    seed: Int = 0
    """Random seed: the same seed gives the same readings."""
    devices: Annotated[tuple[SimulatedDevice, ...], Field(min_length=1)]
    """The simulated devices."""


class SerialSourceConfig(_Frozen):
    """One sensor (or framed-protocol node) on a serial port, e.g. ``/dev/ttyUSB0``.

    ``codec`` names a firmware_bridge stream decoder. ``device_id`` names the device when
    frames carry no identity (SDS011, PMS5003); framed-protocol frames carry their own.
    """

    kind: Literal["serial"] = "serial"
    """Source type."""
    name: SafeId
    """Name of this source in logs, metrics and the gateway status (unique)."""
    port: str
    """Serial device path; prefer `/dev/serial/by-id/...`, which survives replugging."""
    baudrate: Annotated[Int, Field(gt=0)] = 9600
    """Line speed (SDS011 and PMS5003: 9600)."""
    codec: Literal["sds011", "pms5003", "textline", "framed"]
    """Wire format of the device, a firmware_bridge stream decoder."""
    device_id: SafeId | None = None
    """Device id: required for `sds011` and `pms5003`, whose frames carry none; for
    `textline` and `framed` it replaces the id in the frame."""
    zone: SafeId | None = None
    """Zone of the readings (default: the gateway's `zone`)."""
    location: Location | None = None
    """Position of the device, `{lat, lon}` in degrees."""
    read_timeout_s: Annotated[Float, Field(gt=0, le=60)] = 0.2
    """Longest wait of one read of the port; shutdown waits at most this long."""
    reconnect_min_s: Annotated[Float, Field(gt=0, le=60)] = 0.5
    """First delay before reopening a port that failed or was unplugged."""
    reconnect_max_s: Annotated[Float, Field(gt=0, le=3600)] = 30.0
    """The delay doubles on each failed reopen, up to this."""

    @model_validator(mode="after")
    def _identity(self) -> SerialSourceConfig:
        if self.codec in ("sds011", "pms5003") and self.device_id is None:
            raise ValueError(f"device_id is required: {self.codec} frames carry no identity")
        _backoff_order(self.reconnect_min_s, self.reconnect_max_s)
        return self


class MqttBrokerConfig(_Frozen):
    """The MQTT broker a source subscribes to (the network server's, or the devices')."""

    host: str = "127.0.0.1"
    """Broker host name or address."""
    port: Annotated[Int, Field(gt=0, lt=65536)] = 1883
    """Broker port (8883 is usual with `tls: true`)."""
    username: str | None = None
    """User name, if the broker asks for one."""
    password: SecretStr | None = None
    """Password (secret: `${VAR}` or `password_file`)."""
    tls: bool = False
    """Connect with TLS."""
    ssl_cafile: Path | None = None
    """CA certificate to verify the broker with (default: the system's CAs)."""
    client_id: str | None = None
    """MQTT client id (default: `climastream-<gateway_id>-<source name>`)."""
    keepalive_s: Annotated[Int, Field(ge=5, le=3600)] = 30
    """MQTT keepalive: a dead connection is noticed within about 1.5 times this."""


class MqttDeviceMeta(_Frozen):
    """Where a device publishing over MQTT is: readings carry its zone and location."""

    zone: SafeId | None = None
    """Zone of this device's readings."""
    location: Location | None = None
    """Position of the device, `{lat, lon}` in degrees."""


class MqttSourceConfig(_Frozen):
    """Devices publishing over MQTT: LoRaWAN network servers or generic MQTT devices.

    ``format`` picks the firmware_bridge payload decoder: ``chirpstack`` / ``tts`` for
    LoRaWAN uplink envelopes (the application payload is decoded by ``lorawan_codec``),
    ``json``, ``senml`` or ``annexb`` for devices that publish JSON. Messages are received
    with QoS 1 and acknowledged to the broker only after their readings are durable.
    """

    kind: Literal["mqtt"] = "mqtt"
    """Source type."""
    name: SafeId
    """Name of this source in logs, metrics and the gateway status (unique)."""
    broker: MqttBrokerConfig = MqttBrokerConfig()
    """The MQTT broker to subscribe to."""
    topics: Annotated[tuple[str, ...], Field(min_length=1)]
    """Topic filters to subscribe to (QoS 1), e.g. `application/+/device/+/event/up`."""
    format: Literal["chirpstack", "tts", "json", "senml", "annexb"]
    """Payload format: LoRaWAN network-server envelopes (`chirpstack`, `tts`) or device
    JSON (`json`, `senml`, `annexb`)."""
    lorawan_codec: Literal["cayenne", "layout"] | None = None
    """Decoder of the LoRaWAN application payload (required for `chirpstack` and `tts`)."""
    layout: str | None = None
    """With `lorawan_codec: layout`: a firmware_bridge layout YAML file, or the name of a
    built-in layout (`dragino-lht65`)."""
    mapping: dict[str, Any] | None = None
    """With `format: json`: the firmware_bridge field mapping (topic template and
    fields)."""
    devices: dict[SafeId, MqttDeviceMeta] = Field(default_factory=dict)
    """Per device id (or DevEUI): its `zone` and `location`. With `chirpstack` or `tts` a
    key is a DevEUI in any case (`70B3D57ED0000001`): readings carry it in lower case."""
    reconnect_min_s: Annotated[Float, Field(gt=0, le=60)] = 0.5
    """First delay before reconnecting to a lost broker."""
    reconnect_max_s: Annotated[Float, Field(gt=0, le=3600)] = 30.0
    """The delay doubles on each failed reconnect, up to this."""

    @field_validator("devices")
    @classmethod
    def _dev_euis(
        cls, devices: dict[str, MqttDeviceMeta], info: ValidationInfo
    ) -> dict[str, MqttDeviceMeta]:
        """A DevEUI is matched in any case (:meth:`device_meta`), so two keys that differ
        only in case would be one device given twice."""
        if info.data.get("format") in ("chirpstack", "tts"):
            seen: set[str] = set()
            for key in devices:
                if key.lower() in seen:
                    raise ValueError(f"DevEUI {key!r} is given twice (keys differ only in case)")
                seen.add(key.lower())
        return devices

    def device_meta(self) -> dict[str, MqttDeviceMeta]:
        """``devices`` keyed as readings name the devices: LoRaWAN readings carry the DevEUI
        in lower case, and an upper-case key (as network servers' consoles print them) must
        still give the device its zone and location."""
        if self.format in ("chirpstack", "tts"):
            return {key.lower(): meta for key, meta in self.devices.items()}
        return dict(self.devices)

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, mapping: dict[str, Any] | None) -> dict[str, Any] | None:
        """A mapping whose templates cannot work is refused here, not at the first message."""
        if mapping is not None:
            from firmware_bridge.mqtt.generic_json import MappingError, mapping_from_dict

            try:
                mapping_from_dict(mapping)
            except MappingError as exc:  # "mapping.topic: ..." -> "topic: ..."
                raise ValueError(str(exc).removeprefix("mapping.")) from None
        return mapping

    @model_validator(mode="after")
    def _codec(self) -> MqttSourceConfig:
        if self.format in ("chirpstack", "tts") and self.lorawan_codec is None:
            raise ValueError("lorawan_codec is required for chirpstack/tts envelopes")
        if self.lorawan_codec == "layout" and self.layout is None:
            raise ValueError("layout (a firmware_bridge layout YAML) is required")
        if self.format == "json" and self.mapping is None:
            raise ValueError("format json needs a mapping (topic template and fields)")
        _backoff_order(self.reconnect_min_s, self.reconnect_max_s)
        return self


SourceConfig = Annotated[
    SimulatedSourceConfig | SerialSourceConfig | MqttSourceConfig, Field(discriminator="kind")
]


# --------------------------------------------------------------------------- uplink, buffer


#: a DNS name, an IPv4 address or a bracketed IPv6 address
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-_]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]")


def _split_host_port(entry: str) -> tuple[str, str | None]:
    """``host:port`` -> (host, port); a bare host has no port (the client uses 9092)."""
    if entry.startswith("[") and "]" in entry:  # [::1]:9092
        host, _, rest = entry.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") else (rest or None)
    host, sep, port = entry.rpartition(":")
    return (host, port) if sep else (entry, None)


def _is_port(text: str) -> bool:
    return text.isdigit() and 0 < int(text) < 65536


class KafkaConfig(_Frozen):
    """The uplink: an aiokafka producer, batching, compression, TLS and SASL."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka brokers, `host:port[,host:port...]` (not a URL)."""
    linger_ms: Annotated[Int, Field(ge=0, le=10000)] = 20
    """How long the producer waits to fill a batch."""
    max_batch_bytes: Annotated[Int, Field(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024
    """Largest `readings` record; a record holds as many readings as fit."""
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "zstd"
    """Compression of record batches. `zstd` (Kafka 2.1 or newer) compresses as well as
    `gzip` for a twentieth of its CPU; `gzip` is for older brokers. The edge extra installs
    the codecs (cramjam)."""
    request_timeout_ms: Annotated[Int, Field(ge=1000)] = 10000
    """How long to wait for the broker to answer one request."""
    idempotent: Literal["auto", "on", "off"] = "auto"
    """`auto` turns the idempotent producer on when the broker supports it
    (InitProducerId), asked again at each connect."""
    max_in_flight: Annotated[Int, Field(ge=1, le=16)] = 4
    """`readings` records sent before the oldest is acknowledged, used only with the
    idempotent producer (above 5 counts as 5, as Kafka requires for ordered retries);
    without it one at a time, so a failed send never lets a later record land first."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to connect: plain, TLS, SASL, or SASL over TLS."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism (required with `SASL_*`)."""
    sasl_username: str | None = None
    """SASL user name (required with `SASL_*`)."""
    sasl_password: SecretStr | None = None
    """SASL password (secret: `${VAR}` or `sasl_password_file`)."""
    ssl_cafile: Path | None = None
    """CA certificate to verify the brokers with (default: the system's CAs)."""
    ssl_certfile: Path | None = None
    """Client certificate, for brokers that authenticate clients by TLS (with
    `ssl_keyfile`)."""
    ssl_keyfile: Path | None = None
    """Private key of `ssl_certfile`."""
    ssl_password: SecretStr | None = None
    """Password of `ssl_keyfile`, if it is encrypted (secret)."""
    readings_topic: SafeId = "readings"
    """Topic of the `ReadingBatch` records."""
    status_topic: SafeId = "gateway-status"
    """Topic of the periodic `GatewayStatus`."""

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        """``host:port`` entries separated by commas, as Kafka clients take them."""
        for entry in value.split(","):
            entry = entry.strip()
            if not entry:
                raise ValueError(f"{value!r} has an empty entry; give host:port[,host:port]")
            if "://" in entry:
                raise ValueError(
                    f"{entry!r} is a URL; give host:port (e.g. kafka.city.example:9093) and "
                    "set security_protocol for TLS/SASL"
                )
            host, port = _split_host_port(entry)
            if not _HOST.fullmatch(host):
                raise ValueError(f"{entry!r}: expected host:port, e.g. kafka.city.example:9093")
            if port is not None and not _is_port(port):
                raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
        return value

    @model_validator(mode="after")
    def _sasl(self) -> KafkaConfig:
        if problem := kafkasec.consistency_problem(self):
            raise ValueError(problem)
        return self


class BufferConfig(_Frozen):
    """The durable store-and-forward queue between sources and Kafka."""

    backend: Literal["sqlite", "memory"] = "sqlite"
    """`sqlite` (durable, for gateways) or `memory` (tests: lost on restart)."""
    path: Path = Path("/var/lib/climastream/buffer.db")
    """SQLite file of the buffer (WAL mode)."""
    max_bytes: Annotated[Int, Field(ge=64 * 1024)] = 512 * 1024 * 1024
    """Bound of the buffer: each reading counts its payload + 8 bytes, and each chunk
    (ingest batch) 64 bytes."""
    max_age: Annotated[timedelta, BeforeValidator(_not_a_boolean)] = timedelta(days=7)
    """Readings older than this are dropped, counted as `max_age` (ISO 8601 such as
    `P7D`, or seconds). Age is the time the agent ran with a reading buffered (monotonic
    clock): an NTP step of the wall clock never ages the backlog, and time the gateway is
    switched off does not count."""

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration, e.g. P7D (ISO 8601) or seconds")
        return value

    overflow: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    """When full: `drop_oldest` evicts gateway-status records first, then the oldest
    readings; `drop_newest` refuses new readings. Every drop is counted by reason."""
    fsync_window_s: Annotated[Float, Field(ge=0, le=60)] = 0.0
    """0: each append is fsynced before it counts as accepted (nothing accepted is lost
    on a power cut). > 0: appends survive a process crash at once and are synced to the
    disk every window (fewer fsyncs, less SD wear, the longer it is); a power cut loses at
    most the window, counted as `power_cut_unsynced` on restart: an upper bound, by at
    most one window's readings (edge/README.md, Power cut)."""
    seq_lease: Annotated[Int, Field(ge=1, le=1_000_000)] = 1000
    """Gateway-assigned sequence numbers are leased this many ahead, durably, so a power
    cut never makes the agent reuse a (device, seq) that Kafka may already hold. After a
    power cut with `fsync_window_s` > 0 the agent continues after the lease; the numbers
    skipped are not readings and are not counted."""


# --------------------------------------------------------------------------- models


class FeatureSpec(_Frozen):
    """One input column of a model.

    ``quantity`` (default: the reading's own) on the same device, or on ``device`` when a
    neighbour measures it (e.g. humidity from a co-located T/RH sensor). ``window`` > 1 feeds
    the last N values of that series, oldest first, ending with the current one.
    """

    quantity: Quantity | None = None
    """Quantity of this input (default: the model's `quantity`)."""
    device: SafeId | None = None
    """Take it from this device instead of the reading's own (e.g. a neighbouring RH
    sensor)."""
    window: Annotated[Int, Field(ge=1, le=256)] = 1
    """Feed the last N values of the series, oldest first, ending with the current one."""
    max_age_s: Annotated[Float, Field(gt=0)] = 900.0
    """A value older than this is missing: the model is not run on that reading. With a
    `window`, no value of it may be older than this when the next came (nor the newest
    now): a longer gap restarts the series, and the model runs again once `window` values
    followed it."""


class ModelOutputConfig(_Frozen):
    """What the model's output column becomes.

    ``score``: the reading's ``score`` (flag ``anomaly`` when >= ``threshold``);
    ``correct``: replaces the value (flag ``corrected``); ``derive``: a new reading of
    ``quantity`` on device ``<device_id><device_suffix>`` (flag ``derived``).
    """

    kind: Literal["score", "correct", "derive"]
    """`score`: the reading's `score` (flag `anomaly` at or above `threshold`);
    `correct`: replaces the value (flag `corrected`); `derive`: a new reading of
    `quantity` on device `<device_id><device_suffix>` (flag `derived`)."""
    column: Annotated[Int, Field(ge=0)] = 0
    """Which column of the model's output this is."""
    threshold: Annotated[Float, Field(allow_inf_nan=False)] | None = None
    """With `kind: score`: flag `anomaly` at or above this."""
    quantity: Quantity | None = None
    """With `kind: derive`: the quantity of the new reading (required)."""
    device_suffix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,32}$")] = ".corrected"
    """With `kind: derive`: appended to the device id to name the derived device."""

    @model_validator(mode="after")
    def _derive_quantity(self) -> ModelOutputConfig:
        if self.kind == "derive" and self.quantity is None:
            raise ValueError("a derive output needs the quantity it produces")
        # a key the kind does not use would be silently ignored (or, for a correct
        # output's quantity, check its values against another quantity's range)
        used = {"threshold": "score", "quantity": "derive", "device_suffix": "derive"}
        unused = sorted(
            k for k, kind in used.items() if k in self.model_fields_set and kind != self.kind
        )
        if unused:
            raise ValueError(
                f"{', '.join(unused)}: not used by a {self.kind} output "
                "(threshold is for score, quantity and device_suffix for derive)"
            )
        return self


#: longest model id: every reading a model touches carries ``<id>:<12 hex of the file's
#: SHA-256>`` (or ``<id>:unreadable``) as its ``model_id``, an id of at most 128 characters
MODEL_ID_MAX = 128 - len(":") - 12


class ModelConfig(_Frozen):
    """An ONNX model applied to the readings of a device group."""

    id: SafeId
    """Model id (at most 115 characters), recorded with the model's hash on every reading
    it touched: `model_id` is `<id>:<12 hex of the file's SHA-256>`."""

    @field_validator("id")
    @classmethod
    def _fits_in_model_id(cls, value: str) -> str:
        if len(value) > MODEL_ID_MAX:
            raise ValueError(
                f"at most {MODEL_ID_MAX} characters, got {len(value)}: every reading the model "
                "touches carries model_id '<id>:<12 hex of the file's hash>', at most 128"
            )
        return value

    path: Path
    """The ONNX file."""
    devices: Annotated[tuple[str, ...], Field(min_length=1)] = ("*",)
    """Device id globs: the device group the model runs on."""
    quantity: Quantity
    """The readings it runs on (their quantity)."""
    inputs: Annotated[tuple[FeatureSpec, ...], Field(min_length=1)]
    """Input columns, in the order the model takes them."""
    outputs: Annotated[tuple[ModelOutputConfig, ...], Field(min_length=1)]
    """What the output columns become."""


class MetricsConfig(_Frozen):
    """The Prometheus endpoint (`climastream_edge_*` metrics)."""

    listen: str | None = "127.0.0.1:9108"
    """`host:port` of the Prometheus `/metrics` endpoint; null disables it. An IPv6
    address goes in brackets: `[::1]:9108` (loopback), `[::]:9108` (every address)."""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not _HOST.fullmatch(host) or not _is_port(port):
            raise ValueError(
                "expected host:port such as 127.0.0.1:9108, or [::1]:9108 for an IPv6 "
                f"address, got {value!r}"
            )
        return value


class GatewayConfig(_Frozen):
    """One gateway: its id, uplink, buffer, models and sources."""

    gateway_id: SafeId
    """This gateway's id: the key of its records on Kafka, and its name in the status and
    alerts."""
    zone: SafeId | None = None
    """Default zone of readings whose source or device names none."""
    kafka: KafkaConfig = KafkaConfig()
    """The uplink."""
    buffer: BufferConfig = BufferConfig()
    """The durable store-and-forward queue between the sources and Kafka."""
    batch_max_readings: Annotated[Int, Field(ge=1, le=5000)] = 500
    """Most readings in one ingest batch (and buffer chunk)."""
    batch_max_wait_s: Seconds = 0.2
    """When idle, the forwarder looks for new buffered readings at least this often."""
    status_interval_s: Seconds = 10.0
    """Seconds between two `GatewayStatus` records."""
    metrics: MetricsConfig = MetricsConfig()
    """The Prometheus endpoint."""
    models: tuple[ModelConfig, ...] = ()
    """ONNX models run on the gateway (one thread, no spinning)."""
    sources: Annotated[tuple[SourceConfig, ...], Field(min_length=1)]
    """Where readings come from: `serial`, `mqtt` or `simulated`."""

    @field_validator("kafka", "buffer", "metrics", "models", mode="before")
    @classmethod
    def _empty_section_is_defaults(cls, value: Any, info: ValidationInfo) -> Any:
        # `buffer:` with every key under it commented out is YAML null: the defaults
        if value is None:
            return () if info.field_name == "models" else {}
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: each name must be unique; repeated: {dupes}")
        ids = [m.id for m in self.models]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"models: each id must be unique; repeated: {repeated}")
        return self

    @model_validator(mode="after")
    def _unique_device_ids(self, info: ValidationInfo) -> GatewayConfig:
        """Two devices under one id would share ``(device_id, seq)`` numbers (a framed node
        or LoRaWAN device numbers its own) and mix their series: refused, naming both keys.

        A simulated device and a serial source's ``device_id`` name a device of their own;
        an MQTT source's ``devices`` key names a device that publishes there (a LoRaWAN
        device by its DevEUI, which readings carry in lower case). The same key in two MQTT
        sources is no collision: it can be one device heard through both.
        """
        key_lines = (info.context or {}).get("key_lines")

        def where(path: tuple[Any, ...]) -> str:
            return key_path(path) + (key_lines.suffix(path) if key_lines is not None else "")

        owners: dict[str, tuple[tuple[Any, ...], bool]] = {}
        problems: list[str] = []

        def claim(device_id: str, path: tuple[Any, ...], own: bool) -> None:
            first = owners.setdefault(device_id, (path, own))
            if first[0] != path and (own or first[1]):
                problems.append(
                    f"device id {device_id!r} is given to two devices, at {where(first[0])} "
                    f"and at {where(path)}: their readings would share (device_id, seq); give "
                    "each device its own id"
                )

        for index, source in enumerate(self.sources):
            at: tuple[Any, ...] = ("sources", index)
            if isinstance(source, SimulatedSourceConfig):
                for position, device in enumerate(source.devices):
                    claim(device.device_id, (*at, "devices", position, "device_id"), True)
            elif isinstance(source, SerialSourceConfig):
                if source.device_id is not None:
                    claim(source.device_id, (*at, "device_id"), True)
            else:
                lorawan = source.format in ("chirpstack", "tts")
                for key in source.devices:
                    claim(key.lower() if lorawan else key, (*at, "devices", key), False)
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --------------------------------------------------------------------------- loading


def load_config(
    path: Path, overrides: dict[str, Any] | None = None, *, read_secrets: bool = True
) -> GatewayConfig:
    """Load and validate a gateway config file; raise :class:`ConfigError` naming bad keys.

    Relative model and layout paths stay relative to the working directory (systemd runs
    the agent in its state directory); ``*_file`` secrets are relative to the config file.
    ``read_secrets=False`` is for programs that read the file for something else (the
    console, for device positions): secrets become a placeholder, so the gateway's
    environment variables and secret files need not exist where they run.
    """
    try:
        raw, key_lines = load_yaml(path, secret_keys=SECRET_KEYS)  # a key twice: refused
    except YamlFileError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        raw = expand_secrets(
            raw,
            secret_keys=SECRET_KEYS,
            base=path.parent,
            key_lines=key_lines,
            read_secrets=read_secrets,
        )
    except ExpansionError as exc:
        raise ConfigError(f"{path}: {exc}{key_lines.suffix(exc.at)}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            child = node.get(key)
            if child is None:  # absent, or written as an empty section ("buffer:")
                child = node[key] = {}
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"{path}: invalid gateway config:\n  {where}: expected a mapping of "
                    f"settings, got {type(child).__name__}"
                )
            node = child
        node[leaf] = value
        key_lines.overridden(dotted.split("."))
    try:
        return GatewayConfig.model_validate(raw, context={"key_lines": key_lines})
    except ValidationError as exc:
        # drop pydantic's union-tag segment ("serial") so the key path reads like YAML
        problems = error_lines(
            exc,
            root="<top>",
            drop=("simulated", "serial", "mqtt"),
            key_lines=key_lines,
            model=GatewayConfig,
        )
        lines = [f"  {problem}" for problem in problems]
        raise ConfigError(f"{path}: invalid gateway config:\n" + "\n".join(lines)) from None
