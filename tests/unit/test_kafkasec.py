"""Kafka TLS/SASL settings of the cloud side: what aiokafka and Faust receive, and the one
line a bad setting gives. The TLS path runs for real in tests/integration/test_kafka_tls.py;
SASL cannot (Tansu cannot create a SCRAM user on a broker that demands authentication), so
its mapping is checked here, down to the keywords Faust's own driver hands aiokafka."""

from __future__ import annotations

import argparse
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from climastream import kafkasec
from climastream.cli import main
from climastream.kafkasec import KafkaSecurity, KafkaSecurityError

SECRET = "hunter2-do-not-print"
SASL_SSL = {
    "CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "CLIMASTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "CLIMASTREAM_KAFKA_SASL_USERNAME": "climastream",
    "CLIMASTREAM_KAFKA_SASL_PASSWORD": SECRET,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(kafkasec.ENV.values()):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var + "_FILE", raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate signed by it (``openssl`` command)."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command")
    tmp = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out",
            "client.csr", "-subj", "/CN=client")  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "client.pem", "-days", "2")  # fmt: skip
    return tmp


# --------------------------------------------------------------------------- mapping


def test_plaintext_is_the_default_and_adds_nothing_but_the_protocol() -> None:
    security = KafkaSecurity.from_env({})
    assert security.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None


def test_sasl_ssl_gives_aiokafka_the_mechanism_the_user_the_password_and_a_context() -> None:
    kwargs = KafkaSecurity.from_env(SASL_SSL).aiokafka_kwargs()
    context = kwargs.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "climastream",
        "sasl_plain_password": SECRET,
    }


async def test_an_aiokafka_client_takes_the_settings() -> None:
    """aiokafka accepts the keywords (it checks protocol and mechanism when constructed)."""
    from aiokafka import AIOKafkaConsumer

    from climastream.offsets import client_settings

    consumer = AIOKafkaConsumer(
        bootstrap_servers="kafka.city.example:9093",
        **KafkaSecurity.from_env(SASL_SSL).aiokafka_kwargs(),
    )
    got = client_settings(consumer._client)
    await consumer.stop()
    assert got["security_protocol"] == "SASL_SSL"
    assert got["sasl_mechanism"] == "SCRAM-SHA-512"
    assert got["sasl_plain_username"] == "climastream"
    assert got["sasl_plain_password"] == SECRET
    assert isinstance(got["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize(
    ("env", "protocol", "tls"),
    [
        (SASL_SSL, "SASL_SSL", True),
        ({**SASL_SSL, "CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"},
         "SASL_PLAINTEXT", False),
        ({"CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SSL"}, "SSL", True),
    ],
)  # fmt: skip
def test_what_faust_hands_its_clients(env: dict[str, str], protocol: str, tls: bool) -> None:
    """Through Faust's own mapping (its aiokafka driver), for every client it opens."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.app import StreamSettings, create_app

    security = KafkaSecurity.from_env(env)
    app = create_app(StreamSettings(app_id="t", store="memory", kafka_security=security))
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == protocol
    assert isinstance(auth.get("ssl_context"), ssl.SSLContext) == tls
    if protocol.startswith("SASL"):
        assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
        assert auth["sasl_plain_username"] == "climastream"
        assert auth["sasl_plain_password"] == SECRET
        assert SECRET not in repr(app.conf.broker_credentials)


def test_the_alert_engine_gives_faust_the_same_credentials() -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.alerts.app import AlertsSettings, create_app

    app = create_app(AlertsSettings(kafka_security=KafkaSecurity.from_env(SASL_SSL)))
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_plain_username"] == "climastream"


async def test_settings_from_env_reach_the_workers_and_the_sink(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var, value in SASL_SSL.items():
        monkeypatch.setenv(var, value)
    from climastream.offsets import client_settings
    from sinks.config import load_config
    from sinks.influx import SinkRunner
    from stream.alerts.app import AlertsSettings
    from stream.app import StreamSettings

    assert StreamSettings.from_env().kafka_security.security_protocol == "SASL_SSL"
    assert AlertsSettings.from_env().kafka_security.sasl_username == "climastream"
    runner = SinkRunner(load_config(None))
    for client in (runner._aiokafka_consumer(), runner._aiokafka_producer()):
        got = client_settings(getattr(client, "_client", None) or client.client)
        await client.stop()
        assert got["sasl_plain_username"] == "climastream"
        assert got["security_protocol"] == "SASL_SSL"


def test_the_sink_file_may_not_hold_kafka_security(tmp_path: Path) -> None:
    from sinks.config import load_config
    from sinks.errors import ConfigError

    path = tmp_path / "sink.yaml"
    path.write_text("kafka:\n  security: {security_protocol: SSL}\n")
    with pytest.raises(ConfigError, match=r"kafka\.security must not be in the file"):
        load_config(path)


def test_a_client_certificate_is_loaded(pki: Path) -> None:
    security = KafkaSecurity.from_env(
        {
            "CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
            "CLIMASTREAM_KAFKA_SSL_CAFILE": str(pki / "ca.pem"),
            "CLIMASTREAM_KAFKA_SSL_CERTFILE": str(pki / "client.pem"),
            "CLIMASTREAM_KAFKA_SSL_KEYFILE": str(pki / "client.key"),
        }
    )
    assert security.describe() == "SSL client certificate"
    assert isinstance(security.aiokafka_kwargs()["ssl_context"], ssl.SSLContext)


# --------------------------------------------------------------------------- sources


def test_a_password_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n")
    env = {**SASL_SSL, "CLIMASTREAM_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw")}
    del env["CLIMASTREAM_KAFKA_SASL_PASSWORD"]
    kwargs = KafkaSecurity.from_env(env).aiokafka_kwargs()
    assert kwargs["sasl_plain_password"] == SECRET


def test_options_win_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-the-option")
    args = argparse.Namespace(
        kafka_security_protocol="sasl_plaintext",
        kafka_sasl_mechanism="plain",
        kafka_sasl_username="other",
        kafka_sasl_password_file=str(tmp_path / "pw"),
        kafka_ssl_cafile=None,
        kafka_ssl_certfile=None,
        kafka_ssl_keyfile=None,
    )
    kwargs = kafkasec.from_args(args, SASL_SSL).aiokafka_kwargs()
    assert kwargs == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "other",
        "sasl_plain_password": "from-the-option",
    }


def test_secrets_never_show_in_reprs_or_descriptions() -> None:
    security = KafkaSecurity.from_env(SASL_SSL)
    for text in (repr(security), str(security), security.describe()):
        assert SECRET not in text
    assert security.describe() == "SASL_SSL SCRAM-SHA-512 user climastream"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"},
         "CLIMASTREAM_KAFKA_SECURITY_PROTOCOL: 'TLS' is not one of PLAINTEXT, SSL, "
         "SASL_PLAINTEXT, SASL_SSL"),
        ({**SASL_SSL, "CLIMASTREAM_KAFKA_SASL_MECHANISM": "GSSAPI"},
         "CLIMASTREAM_KAFKA_SASL_MECHANISM: 'GSSAPI' is not one of PLAIN, SCRAM-SHA-256, "
         "SCRAM-SHA-512"),
        ({"CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
         "CLIMASTREAM_KAFKA_SASL_MECHANISM is not set; SASL_SSL needs it"),
        ({k: v for k, v in SASL_SSL.items() if "PASSWORD" not in k},
         "CLIMASTREAM_KAFKA_SASL_PASSWORD (or CLIMASTREAM_KAFKA_SASL_PASSWORD_FILE) is not set"),
        ({"CLIMASTREAM_KAFKA_SSL_CAFILE": "/etc/ssl/ca.pem"},
         "CLIMASTREAM_KAFKA_SSL_CAFILE is set but CLIMASTREAM_KAFKA_SECURITY_PROTOCOL is "
         "PLAINTEXT, which does not use it; set it to SSL or SASL_SSL"),
        ({**SASL_SSL, "CLIMASTREAM_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"},
         "CLIMASTREAM_KAFKA_SASL_PASSWORD and CLIMASTREAM_KAFKA_SASL_PASSWORD_FILE are both set"),
        ({**SASL_SSL, "CLIMASTREAM_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
         "CLIMASTREAM_KAFKA_SSL_CAFILE: /nonexistent/ca.pem is not a readable file"),
        ({"CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
          "CLIMASTREAM_KAFKA_SSL_CERTFILE": "/etc/hostname"},
         "CLIMASTREAM_KAFKA_SSL_KEYFILE is not set; a client certificate needs both"),
    ],
)  # fmt: skip
def test_a_bad_setting_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaSecurityError) as raised:
        KafkaSecurity.from_env(env)
    assert message in str(raised.value)
    assert SECRET not in str(raised.value)


def test_a_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    env = {"CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
           "CLIMASTREAM_KAFKA_SSL_CAFILE": str(tmp_path / "ca.pem")}  # fmt: skip
    with pytest.raises(KafkaSecurityError, match="CLIMASTREAM_KAFKA_SSL_CAFILE: not a PEM"):
        KafkaSecurity.from_env(env)


def test_a_key_that_does_not_match_the_certificate_is_named(pki: Path) -> None:
    env = {
        "CLIMASTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CLIMASTREAM_KAFKA_SSL_CERTFILE": str(pki / "client.pem"),
        "CLIMASTREAM_KAFKA_SSL_KEYFILE": str(pki / "ca.key"),
    }
    with pytest.raises(KafkaSecurityError) as raised:
        KafkaSecurity.from_env(env)
    assert str(raised.value).startswith(
        "CLIMASTREAM_KAFKA_SSL_CERTFILE / CLIMASTREAM_KAFKA_SSL_KEYFILE: cannot load"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["topics", "create"],
        ["stream", "worker"],
        ["alerts", "engine"],
        ["alerts", "list"],
        ["alerts", "ack", "0d3a263a4f79dcdc"],
        ["alerts", "history", "0d3a263a4f79dcdc"],
        ["tail"],
        ["console"],
        ["sink", "run"],
    ],
)
def test_every_command_stops_with_one_line_naming_the_variable(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before connecting anywhere (the broker address is one nothing listens on)."""
    monkeypatch.setenv("CLIMASTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("CLIMASTREAM_CONSOLE_OPERATOR_TOKEN", "a-token-long-enough-1234")
    env = {k: v for k, v in SASL_SSL.items() if "USERNAME" not in k}
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.err.strip().endswith("CLIMASTREAM_KAFKA_SASL_USERNAME is not set; SASL_SSL needs it")
    assert len(out.err.strip().splitlines()) == 1
    assert SECRET not in out.out + out.err


def test_the_notifier_stops_with_one_line_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "alerting.yaml"
    config.write_text(
        "webhooks: [{name: w, url: 'http://127.0.0.1:9/hook', secret: s}]\n"
        "contacts: {ops: {webhook: w}}\nroutes: [{match: {}, notify: [ops]}]\n"
        f"ledger: {tmp_path / 'ledger.db'}\n"
    )
    monkeypatch.setenv("CLIMASTREAM_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("CLIMASTREAM_KAFKA_SSL_CAFILE", str(tmp_path / "missing.pem"))
    assert main(["alerts", "notify", "--config", str(config), "--kafka", "127.0.0.1:9"]) == 2
    assert "CLIMASTREAM_KAFKA_SSL_CAFILE:" in capsys.readouterr().err


def test_an_option_is_named_when_it_is_the_culprit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["alerts", "list", "--kafka", "127.0.0.1:9", "--kafka-security-protocol", "SSL",
            "--kafka-ssl-cafile", "/nonexistent/ca.pem"]  # fmt: skip
    assert main(argv) == 2
    assert "--kafka-ssl-cafile: /nonexistent/ca.pem is not a readable file" in (
        capsys.readouterr().err
    )


def test_every_command_with_kafka_lists_the_security_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["topics", "create"], ["stream", "worker"], ["alerts", "engine"],
                 ["alerts", "notify"], ["alerts", "list"], ["tail"], ["console"],
                 ["sink", "run"]):  # fmt: skip
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = capsys.readouterr().out
        for option in kafkasec.OPTIONS:
            assert option in text, (argv, option)
        assert "--kafka-sasl-password " not in text  # a password is never an option


def test_sink_init_does_not_need_the_kafka_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sink init`` talks to InfluxDB only: its pod or service need not mount Kafka's CA."""
    from sinks.cli import _load

    monkeypatch.setenv("CLIMASTREAM_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("CLIMASTREAM_KAFKA_SSL_CAFILE", str(tmp_path / "not-mounted.pem"))
    args = argparse.Namespace(config=None, kafka=None, influx_url=None, org=None)
    assert _load(args, kafka=False).kafka.security.security_protocol == "PLAINTEXT"


@pytest.mark.parametrize("argv", [["stream", "worker"], ["alerts", "engine"], ["alerts", "list"]])
def test_an_option_completes_the_environment_for_the_workers_too(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The options win over the environment, so a setting missing from it may come as an
    option. The KPI worker and the alert engine read the environment alone first and
    stopped with 'CLIMASTREAM_KAFKA_SASL_USERNAME is not set' although
    --kafka-sasl-username gave it; they now get as far as the broker (nothing listens)."""
    for var, value in SASL_SSL.items():
        if "USERNAME" not in var:
            monkeypatch.setenv(var, value)
    monkeypatch.setenv("CLIMASTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    main([*argv, "--kafka-sasl-username", "climastream"])
    err = capsys.readouterr().err
    assert "is not set" not in err
    assert "cannot reach Kafka at 127.0.0.1:9 over SASL_SSL SCRAM-SHA-512 user climastream" in err
