"""Cloud services' metrics endpoints: loopback by default, any address when asked (containers)."""

from __future__ import annotations

import pytest

from climastream.cli import build_parser

COMMANDS = [
    ["stream", "worker"],
    ["alerts", "engine"],
    ["alerts", "notify", "--config", "alerting.yaml"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_metrics_host_defaults_to_loopback_and_can_be_set(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIMASTREAM_METRICS_HOST", raising=False)
    assert build_parser().parse_args(command).metrics_host == "127.0.0.1"
    assert build_parser().parse_args([*command, "--metrics-host", "::"]).metrics_host == "::"
    monkeypatch.setenv("CLIMASTREAM_METRICS_HOST", "0.0.0.0")
    assert build_parser().parse_args(command).metrics_host == "0.0.0.0"
