"""Every config file: a key written twice is refused, and an error says on which line."""

from __future__ import annotations

from pathlib import Path

import pytest

from climastream.yamlfile import KeyLines, YamlFileError, load_yaml, parse_yaml


def test_a_key_written_twice_is_refused_naming_both_lines() -> None:
    with pytest.raises(YamlFileError, match=r"gw.yaml: not valid YAML") as caught:
        parse_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "gw.yaml")
    message = str(caught.value)
    assert "found key 'c' a second time (first on line 3)" in message
    assert "line 4, column 3" in message
    assert "<unicode string>" not in message  # the file is named in front, once
    with pytest.raises(YamlFileError, match=r"found key 'c' a second time \(first on line 1\)"):
        parse_yaml("{c: 1, c: 2}")  # in one flow mapping on one line too


def test_keys_and_list_items_have_their_lines() -> None:
    text = (
        "top: 1\nsources:\n  - kind: serial\n    baudrate: -1\n  - {kind: mqtt, x: 2}\n3: three\n"
    )
    document, lines = parse_yaml(text)
    assert document["sources"][1] == {"kind": "mqtt", "x": 2}
    assert lines.line(["top"]) == 1
    assert lines.line(["sources", 0, "baudrate"]) == 4
    assert lines.line(["sources", 1, "x"]) == 5
    assert lines.line([3]) == 6  # the key as constructed: the int 3
    # a missing key: the line of the section that lacks it
    assert lines.line(["sources", 1, "name"]) == 5
    assert lines.line(["sources", 0, "name"]) == 3
    assert lines.line([]) is None
    assert lines.line(["nowhere"]) is None


def test_a_key_set_from_the_command_line_has_no_line_in_the_file() -> None:
    _, lines = parse_yaml("kafka:\n  linger_ms: 5\n")
    lines.overridden(["kafka", "bootstrap_servers"])
    assert lines.line(["kafka", "bootstrap_servers"]) is None
    assert lines.line(["kafka", "linger_ms"]) == 2
    assert KeyLines().line(["kafka"]) is None


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(YamlFileError, match=r"missing.yaml: cannot read: No such file"):
        load_yaml(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: \xff\n")
    with pytest.raises(YamlFileError, match=r"binary.yaml: not UTF-8 text \(byte 3\)"):
        load_yaml(binary)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    document, lines = load_yaml(empty)
    assert document is None
    assert len(lines) == 0


# ----------------------------------------------------------- each config loader uses it


def test_gateway_config_errors_carry_lines(tmp_path: Path) -> None:
    from edge.config import ConfigError, load_config

    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\n"
        "kafka:\n"
        "  linger_ms: -5\n"
        "sources:\n"
        "  - kind: serial\n"
        "    name: s\n"
        "    port: /dev/ttyUSB0\n"
        "    codec: framed\n"
        "    baudrate: 0\n"
        "  - kind: mqtt\n"
        "    name: m\n"
        "    topics: [a]\n"
        "    password: ${CLIMASTREAM_TEST_UNSET_VARIABLE}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "sources.1.password: environment variable CLIMASTREAM_TEST_UNSET_VARIABLE" in str(
        caught.value
    )
    assert str(caught.value).endswith("(line 13)")
    path.write_text(path.read_text().replace("${CLIMASTREAM_TEST_UNSET_VARIABLE}", "x"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"kafka.bootstrap_servers": "kafka://k:9092"})
    problems = str(caught.value).splitlines()[1:]
    assert "  kafka.linger_ms: Input should be greater than or equal to 0 (line 3)" in problems
    assert any(p.startswith("  sources.0.baudrate:") and p.endswith("(line 9)") for p in problems)
    assert any(p.startswith("  sources.1.format: Field required (line 10)") for p in problems)
    # the bad broker came from --kafka, not from the file: no line
    (broker,) = [p for p in problems if "bootstrap_servers" in p]
    assert "is a URL" in broker
    assert "(line" not in broker


def test_a_secret_read_from_a_file_is_reported_at_its_file_key(tmp_path: Path) -> None:
    """``password_file`` becomes ``password`` when read: an error about it (here: a serial
    source takes no password) points at the ``password_file`` line, not the section's."""
    from edge.config import ConfigError, load_config

    (tmp_path / "pw").write_text("hunter2-xyz\n")
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\n"
        "sources:\n"
        "  - kind: serial\n"
        "    name: s\n"
        "    port: /dev/ttyUSB0\n"
        "    codec: framed\n"
        "    password_file: pw\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "  sources.0.password: unknown key; this section has: kind, name, port," in message
    assert message.endswith("(line 7)")
    assert "hunter2" not in str(caught.value)  # the secret itself is never shown


def test_other_config_files_carry_lines_and_refuse_duplicates(tmp_path: Path) -> None:
    from firmware_bridge.simulators.runner import load_fleet
    from sinks.config import ConfigError as SinkConfigError
    from sinks.config import load_config as load_sink
    from sinks.notify.config import ConfigError as NotifyConfigError
    from sinks.notify.config import load_config as load_notify
    from stream.alerts.rules import RulesError, load_rules
    from stream.config import StreamConfig, StreamConfigError

    path = tmp_path / "file.yaml"
    path.write_text("timezone: Europe/Brussels\nwatermark_grace: P1D\nnope: 1\n")
    with pytest.raises(StreamConfigError, match=r"nope: unknown key; .* \(line 3\)"):
        StreamConfig.load(path)
    path.write_text("timezone: Europe/Brussels\ntimezone: UTC\n")
    with pytest.raises(StreamConfigError, match="found key 'timezone' a second time"):
        StreamConfig.load(path)

    # a rule's key that came from ``defaults`` is found there
    path.write_text(
        "defaults:\n"
        "  severity: loud\n"
        "rules:\n"
        "  - id: hot\n"
        "    kind: threshold\n"
        "    kpi: heat.index\n"
        "    set: 40\n"
    )
    with pytest.raises(RulesError, match=r"rules.0\(hot\).severity: .* \(line 2\)"):
        load_rules(path)

    path.write_text("influx:\n  batch_lines: 0\n")
    with pytest.raises(SinkConfigError, match=r"influx.batch_lines: .* \(line 2\)"):
        load_sink(path)

    path.write_text("routes: 5\n")
    with pytest.raises(NotifyConfigError, match=r"\(line 1\)"):
        load_notify(path)

    path.write_text("serial:\n  - kind: sds011\n    kind: pms5003\n")
    with pytest.raises(ValueError, match="found key 'kind' a second time"):
        load_fleet(path)


def test_a_sink_setting_from_the_command_line_has_no_line(tmp_path: Path) -> None:
    from sinks.config import ConfigError as SinkConfigError
    from sinks.config import load_config as load_sink

    path = tmp_path / "sink.yaml"
    path.write_text("influx:\n  url: http://127.0.0.1:8428\n  batch_lines: 5000\n")
    with pytest.raises(SinkConfigError) as caught:
        load_sink(path, {"influx": {"batch_lines": 0}})
    assert "influx.batch_lines: Input should be greater than or equal to 1" in str(caught.value)
    assert "(line" not in str(caught.value)  # not line 3: the bad value is not the file's


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("kafka:\n  sasl_password: old-s3cret\n  sasl_password: new-s3cret\n", 3),
        ("kafka:\n  sasl_password: s3cret: tail\n", 2),
        ('kafka:\n  sasl_password: "s3cret-left-open\n  linger_ms: 5\n', 2),
        ("kafka: {sasl_password: *s3cret}\n", 1),
        ("kafka:\n  sasl_password: !s3cret x\n", 2),
        ("kafka:\n  sasl_password: s3cret\n    more-s3cret: x\n", 3),
        ("sources:\n  - password: s3cret\n    password: s3cret-too\n", 3),
    ],
)
def test_an_error_never_prints_a_line_that_holds_a_secret(text: str, line: int) -> None:
    with pytest.raises(YamlFileError) as caught:
        parse_yaml(text, "gw.yaml", secret_keys={"sasl_password", "password"})
    message = str(caught.value)
    assert "s3cret" not in message
    assert f"line {line}, column" in message
    assert "(a line with a secret: not shown)" in message


def test_an_error_elsewhere_still_shows_its_line() -> None:
    text = "kafka:\n  sasl_password: s3cret\n  sasl_password_file: pw\nsources: [1, 2\nnext: 3\n"
    with pytest.raises(YamlFileError) as caught:
        parse_yaml(text, "gw.yaml", secret_keys={"sasl_password"})
    message = str(caught.value)
    assert "s3cret" not in message
    assert "sources: [1, 2" in message  # the lines without a secret keep their caret
    assert "    next: 3\n        ^" in message
    with pytest.raises(YamlFileError, match=r"found key 'c' a second time"):
        parse_yaml("c: 1\nc: 2\n", secret_keys={"sasl_password"})


def test_a_character_yaml_does_not_allow_is_named_by_line() -> None:
    with pytest.raises(
        YamlFileError, match=r"gw.yaml: .*#x0001 is not allowed \(line 2, column 6\)"
    ):
        parse_yaml('a: 1\nb: "x\x01"\n', "gw.yaml")


def test_an_unknown_key_is_called_that_with_the_key_it_is_closest_to(tmp_path: Path) -> None:
    """A misspelt key is the installer's most common mistake: say which key was meant,
    in nested sections, list items and tagged-union sources alike."""
    from edge.config import ConfigError, load_config

    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway_id: gw1\n"
        "zome: centre\n"
        "kafka: {bootstrap_server: k:9092}\n"
        "metrics: {port: 9108}\n"
        "sources:\n"
        "  - kind: serial\n"
        "    name: s\n"
        "    port: /dev/ttyUSB0\n"
        "    codec: framed\n"
        "    baudrat: 9600\n"
        "  - kind: mqtt\n"
        "    name: m\n"
        "    topics: [t]\n"
        "    format: json\n"
        "    devices: {dev1: {zoen: park}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()[1:]
    assert sorted(lines) == [
        "  kafka.bootstrap_server: unknown key; did you mean 'bootstrap_servers'? (line 3)",
        "  metrics.port: unknown key; this section has: listen (line 4)",
        "  sources.0.baudrat: unknown key; did you mean 'baudrate'? (line 10)",
        "  sources.1.devices.dev1.zoen: unknown key; did you mean 'zone'? (line 15)",
        "  zome: unknown key; did you mean 'zone'? (line 2)",
    ]
