"""Configuration of ``climastream sink run`` and ``climastream sink init``.

One YAML file (see ``deploy/local/sink.yaml`` and sinks/README.md), validated at load time
into frozen pydantic models; an error names the offending key and the file. The token is
never in the file: it comes from ``CLIMASTREAM_INFLUX_TOKEN`` or from ``influx.token_file``
(a mounted secret), and is held as a :class:`~pydantic.SecretStr` so it never appears in
logs or reprs. Kafka's TLS and SASL settings are not in the file either: they come from the
``CLIMASTREAM_KAFKA_SECURITY_PROTOCOL`` ... variables (or the ``--kafka-*`` options) as for
every cloud-side command (:mod:`climastream.kafkasec`) and land in ``kafka.security``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from climastream.contract import Topics
from climastream.kafkasec import KafkaSecurity, KafkaSecurityError
from climastream.validation import error_lines
from climastream.yamlfile import KeyLines, YamlFileError, load_yaml
from sinks.errors import ConfigError
from sinks.lineprotocol import Precision

TOKEN_ENV = "CLIMASTREAM_INFLUX_TOKEN"

#: which bucket each topic goes to: raw readings short-lived, the rest long-lived
DEFAULT_TOPIC_BUCKETS: dict[str, str] = {
    Topics.READINGS.name: "raw",
    Topics.KPI.name: "kpi",
    Topics.ALERTS.name: "kpi",
    Topics.GATEWAY_STATUS.name: "kpi",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    #: every sink process with the same group shares the topics' partitions
    group_id: str = "climastream-sink"
    topics: tuple[str, ...] = tuple(DEFAULT_TOPIC_BUCKETS)
    dead_letter_topic: str = Topics.DEAD_LETTER.name
    session_timeout: timedelta = timedelta(seconds=6)
    heartbeat_interval: timedelta = timedelta(seconds=1)
    #: a DB outage keeps the sink from polling; it must not cost the group membership
    max_poll_interval: timedelta = timedelta(hours=6)
    #: bounds what the consumer prefetches while a write is pending (memory bound)
    fetch_max_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    max_partition_fetch_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    client_id: str = "climastream-sink"
    #: TLS and SASL: from the environment or the command line, never from the file
    security: KafkaSecurity = KafkaSecurity()


class BucketSpec(_Frozen):
    name: str
    #: 0 means infinite retention
    retention: timedelta


class InfluxSettings(_Frozen):
    url: str = "http://127.0.0.1:8086"
    org: str = "climastream"
    token: SecretStr = SecretStr("")
    token_file: Path | None = None
    #: logical bucket name -> real bucket with retention (used by ``sink init`` too)
    buckets: dict[str, BucketSpec] = Field(
        default_factory=lambda: {
            "raw": BucketSpec(name="climastream-raw", retention=timedelta(days=30)),
            "kpi": BucketSpec(name="climastream", retention=timedelta(days=3650)),
        }
    )
    #: topic -> logical bucket
    topic_buckets: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TOPIC_BUCKETS))
    precision: Precision = Precision.NS
    batch_lines: Annotated[int, Field(ge=1, le=100_000)] = 5000
    #: how long a partial batch may wait for more records before it is written
    linger: timedelta = timedelta(milliseconds=500)
    gzip_level: Annotated[int, Field(ge=0, le=9)] = 1
    request_timeout: timedelta = timedelta(seconds=30)
    #: first and longest retry delay for retriable failures (doubling, with jitter)
    retry_initial: timedelta = timedelta(milliseconds=200)
    retry_max: timedelta = timedelta(seconds=30)
    #: batches rendered and sent concurrently; memory is bounded by this x batch_lines
    max_in_flight: Annotated[int, Field(ge=1, le=16)] = 2

    @model_validator(mode="after")
    def _topics_have_buckets(self) -> InfluxSettings:
        for topic, logical in self.topic_buckets.items():
            if logical not in self.buckets:
                raise ValueError(
                    f"topic_buckets.{topic} names bucket {logical!r}, which is not in "
                    f"buckets ({', '.join(sorted(self.buckets))})"
                )
        return self

    def bucket_for(self, topic: str) -> str:
        return self.buckets[self.topic_buckets[topic]].name

    def resolved_token(self) -> SecretStr:
        """The token from the environment, else ``token_file``, else the config (tests)."""
        if os.environ.get(TOKEN_ENV):
            return SecretStr(os.environ[TOKEN_ENV])
        if self.token_file is not None:
            try:
                return SecretStr(self.token_file.read_text().strip())
            except OSError as exc:
                raise ConfigError(f"influx.token_file {self.token_file}: {exc}") from exc
        return self.token


class MetricsSettings(_Frozen):
    host: str = "127.0.0.1"
    #: 0 disables the Prometheus endpoint
    port: Annotated[int, Field(ge=0, le=65535)] = 9464


class SinkConfig(_Frozen):
    kafka: KafkaSettings = KafkaSettings()
    influx: InfluxSettings = InfluxSettings()
    metrics: MetricsSettings = MetricsSettings()
    #: how long SIGTERM may spend flushing the last batch before giving up (uncommitted
    #: records are then re-read by the next sink: nothing is lost)
    shutdown_timeout: timedelta = timedelta(seconds=30)

    @model_validator(mode="after")
    def _topics_routed(self) -> SinkConfig:
        for topic in self.kafka.topics:
            if topic not in self.influx.topic_buckets:
                raise ValueError(
                    f"kafka.topics has {topic!r} but influx.topic_buckets does not route it"
                )
        return self


def _env_overrides() -> dict[str, Any]:
    """The environment variables the demo and containers use, as config overrides."""
    kafka: dict[str, Any] = {}
    influx: dict[str, Any] = {}
    if value := os.environ.get("CLIMASTREAM_KAFKA_BOOTSTRAP"):
        kafka["bootstrap_servers"] = value
    if value := os.environ.get("CLIMASTREAM_INFLUX_URL"):
        influx["url"] = value
    if value := os.environ.get("CLIMASTREAM_INFLUX_ORG"):
        influx["org"] = value
    return {"kafka": kafka, "influx": influx}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        elif not (isinstance(value, dict) and not value):
            merged[key] = value
    return merged


def _leaves(tree: dict[str, Any], at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The key paths of the values in a nested override mapping."""
    out: list[tuple[str, ...]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _leaves(value, (*at, key))
        else:
            out.append((*at, key))
    return out


def load_config(
    path: Path | None,
    overrides: dict[str, Any] | None = None,
    security: KafkaSecurity | None = None,
) -> SinkConfig:
    """Read ``path`` (or defaults), apply environment then ``overrides``; validate.
    ``security`` (default: from the ``CLIMASTREAM_KAFKA_*`` variables) becomes
    ``kafka.security``.

    Raises :class:`ConfigError` naming the key (``influx.batch_lines: ...``) and the file,
    or the variable of a bad TLS/SASL setting.
    """
    raw: dict[str, Any] = {}
    key_lines: KeyLines | None = None
    where = str(path) if path else "<defaults>"
    if path is not None:
        try:
            loaded, key_lines = load_yaml(path)
        except YamlFileError as exc:
            raise ConfigError(str(exc)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{where}: the top level must be a mapping")
        raw = loaded or {}
        if "token" in (raw.get("influx") or {}):
            raise ConfigError(
                f"{where}: influx.token must not be in the file; set {TOKEN_ENV} "
                "or influx.token_file"
            )
        if "security" in (raw.get("kafka") or {}):
            raise ConfigError(
                f"{where}: kafka.security must not be in the file; set "
                "CLIMASTREAM_KAFKA_SECURITY_PROTOCOL and the CLIMASTREAM_KAFKA_SASL_* / "
                "CLIMASTREAM_KAFKA_SSL_* variables (sinks/README.md)"
            )
    try:
        security = security or KafkaSecurity.from_env()
    except KafkaSecurityError as exc:
        raise ConfigError(str(exc)) from None
    for over in (_env_overrides(), overrides or {}):
        raw = _merge(raw, over)
        if key_lines is not None:  # a value from the environment or the command line
            for leaf in _leaves(over):  # has no line in the file
                key_lines.overridden(leaf)
    try:
        config = SinkConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(error_lines(exc, key_lines=key_lines, model=SinkConfig))
        raise ConfigError(f"{where}: {problems}") from None
    kafka = config.kafka.model_copy(update={"security": security})
    return config.model_copy(update={"kafka": kafka})
