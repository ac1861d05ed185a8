"""The config reference and the example config cover every key the loader accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import GatewayConfig, load_config
from edge.reference import _sections, render
from firmware_bridge.mqtt.generic_json import mapping_from_dict

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy/pi/gateway.example.yaml"


def test_config_md_is_the_generated_reference() -> None:
    assert (ROOT / "edge/CONFIG.md").read_text() == render(), (
        "edge/CONFIG.md is stale: climastream edge config-reference > edge/CONFIG.md"
    )


def _models() -> list[type[BaseModel]]:
    return [model for _title, _doc, model in _sections()]


def test_every_key_is_in_the_reference_with_a_description() -> None:
    reference = render()
    for model in _models():
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` |" in reference
    # nested sections are all reached, the three source kinds among them
    names = {model.__name__ for model in _models()}
    assert {"SerialSourceConfig", "MqttSourceConfig", "MqttBrokerConfig", "FeatureSpec"} <= names
    assert GatewayConfig in _models()


def test_the_example_mentions_every_key() -> None:
    example = EXAMPLE.read_text()
    missing = sorted(
        f"{model.__name__}.{name}"
        for model in _models()
        for name in model.model_fields
        if not re.search(rf"\b{name}(_file)?:", example)
    )
    assert not missing, f"keys not shown in {EXAMPLE.name}: {missing}"


def test_the_example_with_its_optional_keys_uncommented_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commented-out lines are real settings: uncommented, they still load."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        match = re.match(r"^(\s*)# ([-\s]*([a-z_]+:(\s|$)|\{).*)$", line)
        lines.append(match.group(1) + match.group(2) if match else line)
    text = "\n".join(lines).replace("/etc/climastream/", f"{tmp_path}/")
    for secret in ("gw.key.password", "mqtt.password"):
        (tmp_path / secret).write_text("secret\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    monkeypatch.setenv("KAFKA_PASSWORD", "x")
    config = load_config(path)
    assert [source.kind for source in config.sources] == [
        "serial",
        "serial",
        "mqtt",
        "mqtt",
        "simulated",
    ]
    assert config.kafka.ssl_password is not None
    assert config.buffer.seq_lease == 1000
    json_source = config.sources[3]
    assert json_source.kind == "mqtt"
    mapping_from_dict(json_source.mapping)  # what the source builds at start
