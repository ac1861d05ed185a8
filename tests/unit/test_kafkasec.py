"""Kafka TLS/SASL settings shared by the edge and the cloud side: what aiokafka receives,
and the one line a bad setting gives."""

from __future__ import annotations

import argparse
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from climastream import kafkasec
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
