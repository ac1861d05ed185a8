"""Kafka TLS and SASL settings, shared by the edge uplink and every cloud-side client.

The names and meanings are the edge config's ``kafka:`` keys (edge/CONFIG.md):
``security_protocol`` (``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``),
``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``), ``sasl_username``,
``sasl_password``, ``ssl_cafile``, ``ssl_certfile`` + ``ssl_keyfile`` (a client certificate,
for mTLS) and ``ssl_password`` (of an encrypted key).

The cloud side (KPI worker, alert engine, sink, notifier, console, the CLI) reads them from
the environment, one variable per key (:data:`ENV`): ``CLIMASTREAM_KAFKA_SECURITY_PROTOCOL``,
``CLIMASTREAM_KAFKA_SASL_MECHANISM``, ``CLIMASTREAM_KAFKA_SASL_USERNAME``,
``CLIMASTREAM_KAFKA_SASL_PASSWORD`` or ``CLIMASTREAM_KAFKA_SASL_PASSWORD_FILE``,
``CLIMASTREAM_KAFKA_SSL_CAFILE``, ``CLIMASTREAM_KAFKA_SSL_CERTFILE``,
``CLIMASTREAM_KAFKA_SSL_KEYFILE``, ``CLIMASTREAM_KAFKA_SSL_PASSWORD`` or ``..._FILE``.
A ``*_FILE`` variable names a file holding the secret (a Kubernetes or compose secret);
one trailing newline is stripped. Commands with ``--kafka`` also take the
``--kafka-security-protocol``, ``--kafka-sasl-*`` and ``--kafka-ssl-*`` options
(:func:`add_arguments`), which win over the environment; a password is never an option
(it would show in ``ps``), only a ``--kafka-sasl-password-file``.

Secrets are :class:`pydantic.SecretStr`: they print as ``**********``. A bad setting is one
:class:`KafkaSecurityError` line naming the variable (or option).
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, SecretStr

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)

PREFIX = "CLIMASTREAM_KAFKA_"
#: setting -> its environment variable (secrets also take ``<variable>_FILE``)
ENV: dict[str, str] = {
    name: PREFIX + name.upper()
    for name in (
        "security_protocol",
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
    )
}
SECRETS = ("sasl_password", "ssl_password")


class KafkaSecurityError(ValueError):
    """A TLS/SASL setting is wrong; the message names the variable or option."""


class SecuritySettings(Protocol):
    """What :func:`aiokafka_kwargs` reads: the edge's ``KafkaConfig`` and
    :class:`KafkaSecurity` both have it."""

    @property
    def security_protocol(self) -> str: ...
    @property
    def sasl_mechanism(self) -> str | None: ...
    @property
    def sasl_username(self) -> str | None: ...
    @property
    def sasl_password(self) -> SecretStr | None: ...
    @property
    def ssl_cafile(self) -> Path | None: ...
    @property
    def ssl_certfile(self) -> Path | None: ...
    @property
    def ssl_keyfile(self) -> Path | None: ...
    @property
    def ssl_password(self) -> SecretStr | None: ...


def uses_tls(settings: SecuritySettings) -> bool:
    return settings.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: SecuritySettings) -> bool:
    return settings.security_protocol.startswith("SASL")


def consistency_problem(settings: SecuritySettings) -> str | None:
    """What is missing for ``settings.security_protocol``, in the config's key names (the
    edge config and :meth:`KafkaSecurity.from_env` both report it), or None."""
    if uses_sasl(settings) and not (
        settings.sasl_mechanism and settings.sasl_username and settings.sasl_password
    ):
        return (
            f"security_protocol {settings.security_protocol} needs sasl_mechanism, "
            "sasl_username and sasl_password (or sasl_password_file)"
        )
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        return "ssl_certfile and ssl_keyfile go together (client certificate)"
    return None


def ssl_context(settings: SecuritySettings) -> ssl.SSLContext:
    """A client TLS context: verifies the broker against ``ssl_cafile`` (else the system's
    CAs) and its host name; presents the client certificate if one is set."""
    cafile = str(settings.ssl_cafile) if settings.ssl_cafile else None
    context = ssl.create_default_context(cafile=cafile)
    if settings.ssl_certfile and settings.ssl_keyfile:
        password = settings.ssl_password
        context.load_cert_chain(
            str(settings.ssl_certfile),
            str(settings.ssl_keyfile),
            password=password.get_secret_value() if password else None,
        )
    return context


def aiokafka_kwargs(settings: SecuritySettings) -> dict[str, Any]:
    """The security keywords of an aiokafka producer, consumer or admin client."""
    kwargs: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if uses_tls(settings):
        kwargs["ssl_context"] = ssl_context(settings)
    if uses_sasl(settings) and settings.sasl_mechanism:
        password = settings.sasl_password
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
    return kwargs


def faust_credentials(settings: SecuritySettings) -> Any:
    """Faust's ``broker_credentials``: ``None`` for PLAINTEXT, ``faust.SSLCredentials`` for
    SSL, ``faust.SASLCredentials`` for SASL (with the TLS context for SASL_SSL). Faust
    hands them to every client it opens (``credentials_to_aiokafka_auth``)."""
    if settings.security_protocol == "PLAINTEXT":
        return None
    import faust

    context = ssl_context(settings) if uses_tls(settings) else None
    if not uses_sasl(settings):
        return faust.SSLCredentials(context)
    password = settings.sasl_password
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=password.get_secret_value() if password else None,
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )


class KafkaSecurity(BaseModel):
    """How a cloud-side component connects to Kafka; default PLAINTEXT (the local stack)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None

    def aiokafka_kwargs(self) -> dict[str, Any]:
        return aiokafka_kwargs(self)

    def faust_credentials(self) -> Any:
        return faust_credentials(self)

    def describe(self) -> str:
        """One line for a log, without secrets: ``SASL_SSL SCRAM-SHA-512 user climastream``."""
        parts: list[str] = [self.security_protocol]
        if uses_sasl(self):
            parts += [str(self.sasl_mechanism), f"user {self.sasl_username}"]
        if uses_tls(self) and self.ssl_certfile:
            parts.append("client certificate")
        return " ".join(parts)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, str | None] | None = None,
    ) -> KafkaSecurity:
        """Settings from :data:`ENV` (``environ``, default ``os.environ``); ``overrides``
        (setting -> value, or ``<secret>_file`` -> path; from command-line options, named
        ``--kafka-<setting>``) win. Raises :class:`KafkaSecurityError`, one line naming the
        variable or option; files (CA, certificate, key, secrets) are read here, so a
        missing one is reported before anything connects."""
        env = os.environ if environ is None else environ
        given: dict[str, str] = {}  # setting -> value
        source: dict[str, str] = {}  # setting -> where it came from
        for name, var in ENV.items():
            value = env.get(var, "")
            if value := value if name in SECRETS else value.strip():  # a password as it is
                given[name], source[name] = value, var
            if name in SECRETS and (path := env.get(var + "_FILE", "").strip()):
                if name in given:
                    raise KafkaSecurityError(
                        f"{var} and {var}_FILE are both set; give one (which one wins would "
                        "be a guess)"
                    )
                given[name], source[name] = _read_secret(var + "_FILE", path), var + "_FILE"
        for key, override in (overrides or {}).items():
            if not override:
                continue
            value = override
            option = "--kafka-" + key.replace("_", "-")
            if key.endswith("_file") and key[:-5] in SECRETS:
                key, value = key[:-5], _read_secret(option, value)
            given[key], source[key] = value, option
        if "security_protocol" in given:  # sasl_ssl, SASL-SSL: the same
            given["security_protocol"] = given["security_protocol"].upper().replace("-", "_")
        if "sasl_mechanism" in given:  # scram_sha_512: SCRAM-SHA-512
            given["sasl_mechanism"] = given["sasl_mechanism"].upper().replace("_", "-")
        return cls._validated(given, source)

    @classmethod
    def _validated(cls, given: dict[str, str], source: dict[str, str]) -> KafkaSecurity:
        def where(name: str) -> str:
            return source.get(name, ENV[name])

        protocol = given.get("security_protocol", "PLAINTEXT")
        if protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"{where('security_protocol')}: {protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        mechanism = given.get("sasl_mechanism")
        if mechanism is not None and mechanism not in MECHANISMS:
            raise KafkaSecurityError(
                f"{where('sasl_mechanism')}: {mechanism!r} is not one of {', '.join(MECHANISMS)}"
            )
        tls = protocol in ("SSL", "SASL_SSL")
        sasl = protocol.startswith("SASL")
        for name in given:  # set but ignored: a slip that would connect without it
            if name.startswith("ssl_") and not tls:
                needs = "SSL or SASL_SSL"
            elif name.startswith("sasl_") and not sasl:
                needs = "SASL_PLAINTEXT or SASL_SSL"
            else:
                continue
            raise KafkaSecurityError(
                f"{where(name)} is set but {where('security_protocol')} is {protocol}, which "
                f"does not use it; set it to {needs}"
            )
        if sasl:
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if not given.get(name):
                    extra = f" (or {ENV[name]}_FILE)" if name in SECRETS else ""
                    raise KafkaSecurityError(
                        f"{where(name)}{extra} is not set; {protocol} needs it"
                    )
        if ("ssl_certfile" in given) != ("ssl_keyfile" in given):
            missing = "ssl_keyfile" if "ssl_certfile" in given else "ssl_certfile"
            raise KafkaSecurityError(
                f"{where(missing)} is not set; a client certificate needs both "
                f"{ENV['ssl_certfile']} and {ENV['ssl_keyfile']}"
            )
        settings = cls.model_validate(given)
        if tls:
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = given.get(name)
                if path is not None and not Path(path).is_file():
                    raise KafkaSecurityError(f"{where(name)}: {path} is not a readable file")
            if settings.ssl_cafile is not None:
                try:
                    ssl.create_default_context(cafile=str(settings.ssl_cafile))
                except (ssl.SSLError, OSError) as exc:
                    raise KafkaSecurityError(
                        f"{where('ssl_cafile')}: not a PEM CA certificate: {_reason(exc)}"
                    ) from None
            try:
                ssl_context(settings)
            except (ssl.SSLError, OSError) as exc:
                culprit = "ssl_password" if "ssl_password" in given else "ssl_keyfile"
                raise KafkaSecurityError(
                    f"{where('ssl_certfile')} / {where(culprit)}: cannot load the client "
                    f"certificate: {_reason(exc)}"
                ) from None
        return settings


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(getattr(exc, "strerror", None) or exc)


def _read_secret(where: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").removesuffix("\n")
    except OSError as exc:
        raise KafkaSecurityError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KafkaSecurityError(f"{where}: {path} is not UTF-8 text") from None


# --------------------------------------------------------------------------- CLI

#: option -> setting; the option wins over the setting's variable
OPTIONS: dict[str, str] = {
    "--kafka-security-protocol": "security_protocol",
    "--kafka-sasl-mechanism": "sasl_mechanism",
    "--kafka-sasl-username": "sasl_username",
    "--kafka-sasl-password-file": "sasl_password_file",
    "--kafka-ssl-cafile": "ssl_cafile",
    "--kafka-ssl-certfile": "ssl_certfile",
    "--kafka-ssl-keyfile": "ssl_keyfile",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS/SASL options, beside a command's ``--kafka``."""
    group = parser.add_argument_group(
        "Kafka TLS and SASL",
        "Each option defaults to its CLIMASTREAM_KAFKA_* variable; secrets only from files "
        "or the environment (CLIMASTREAM_KAFKA_SASL_PASSWORD[_FILE], "
        "CLIMASTREAM_KAFKA_SSL_PASSWORD[_FILE]).",
    )
    help_text = {
        "security_protocol": f"{' | '.join(PROTOCOLS)} (default PLAINTEXT)",
        "sasl_mechanism": " | ".join(MECHANISMS),
        "sasl_username": "SASL user name",
        "sasl_password_file": "file holding the SASL password",
        "ssl_cafile": "CA certificate(s) to verify the brokers with (default: the system's)",
        "ssl_certfile": "client certificate, for brokers that authenticate by TLS (mTLS)",
        "ssl_keyfile": "private key of the client certificate",
    }
    for option, name in OPTIONS.items():
        var = ENV.get(name) or ENV[name.removesuffix("_file")] + "_FILE"
        group.add_argument(
            option,
            dest=f"kafka_{name}",
            metavar=name.rsplit("_", 1)[-1].upper() if "file" in name else "VALUE",
            help=f"{help_text[name]} (env {var})",
        )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
    """:meth:`KafkaSecurity.from_env` with the options of :func:`add_arguments` on top."""
    overrides = {name: getattr(args, f"kafka_{name}", None) for name in OPTIONS.values()}
    return KafkaSecurity.from_env(environ, overrides)
