"""``alerting.yaml``: who gets which alert, how, and when.

Example (every key is documented in stream/alerts/README.md)::

    console_url: https://climastream.example.city/console
    timezone: Europe/Brussels
    quiet_hours: {start: "22:00", end: "07:00"}     # non-critical alerts wait until 07:00
    smtp: {host: smtp.example.city, port: 587, starttls: true,
           username: climastream, password_file: /run/secrets/smtp-password,
           from: alerts@example.city}
    webhooks:
      - {name: climate-chat, url: https://chat.example.city/hooks/abc,
         secret: "${CLIMATE_CHAT_SECRET}"}
    alertmanager: {url: http://alertmanager:9093}      # optional
    contacts:
      climate-duty: {email: climate-duty@example.city, webhook: climate-chat}
      climate-head: {email: head-climate@example.city}
    routes:
      - match: {teams: [climate-unit]}
        notify: [climate-duty]
        escalate: {after: 15m, to: [climate-head]}
      - match: {}                                      # catch-all
        notify: [operators]
    retry: {initial: 1s, maximum: 5m, give_up_after: 24h}   # the defaults

Routes are tried in order; the first match wins unless it says ``continue: true``. Loaded
and validated at start; :class:`ConfigError` names the offending key.

Secrets (the SMTP ``password``, each webhook's ``secret``) need not be written in the file:
``${VAR}`` anywhere in a string is the environment variable ``VAR``, and ``password_file``
/ ``secret_file`` read the value from a file (a mounted Docker or Kubernetes secret, a
systemd credential), as in the gateway config (:func:`climastream.yamlfile.expand_secrets`).
"""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from climastream.contract import Alert, AlertSeverity
from climastream.durations import Duration
from climastream.validation import error_lines
from climastream.yamlfile import (
    ExpansionError,
    KeyLines,
    YamlFileError,
    expand_secrets,
    load_yaml,
)

__all__ = [
    "AlertmanagerConfig",
    "ConfigError",
    "Contact",
    "Escalation",
    "NotifyConfig",
    "QuietHours",
    "RetryConfig",
    "Route",
    "RouteMatch",
    "SmtpConfig",
    "WebhookConfig",
    "load_config",
]


#: keys that hold secrets; each also accepts ``<key>_file``
SECRET_KEYS = frozenset({"password", "secret"})

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")]


class ConfigError(ValueError):
    """The alerting config is invalid; the message names the file and the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SmtpConfig(_Frozen):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    starttls: bool = True
    #: implicit TLS (port 465) instead of STARTTLS
    ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(alias="from", default="climastream@localhost")
    #: CA bundle to verify the server (default: the system store); never disable in production
    ca_file: Path | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 15.0

    @model_validator(mode="after")
    def _auth_needs_tls(self) -> SmtpConfig:
        if self.username and not (self.starttls or self.ssl):
            raise ValueError("username set without starttls or ssl: refusing to send a password")
        return self


class WebhookConfig(_Frozen):
    name: Name
    url: Annotated[str, Field(pattern=r"^https?://")]
    #: HMAC-SHA256 key; receivers verify the X-Climastream-Signature header with it
    secret: SecretStr
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class AlertmanagerConfig(_Frozen):
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class Contact(_Frozen):
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    webhook: Name | None = None

    @model_validator(mode="after")
    def _reachable(self) -> Contact:
        if not self.email and not self.webhook:
            raise ValueError("a contact needs an email or a webhook")
        return self


class QuietHours(_Frozen):
    start: time
    end: time


class RouteMatch(_Frozen):
    zones: tuple[str, ...] = ()
    severities: tuple[AlertSeverity, ...] = ()
    teams: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()

    def matches(self, alert: Alert) -> bool:
        return (
            (not self.zones or alert.zone in self.zones)
            and (not self.severities or alert.severity in self.severities)
            and (not self.teams or alert.team in self.teams)
            and (not self.rules or alert.rule_id in self.rules)
        )


class Escalation(_Frozen):
    after: Duration
    to: Annotated[tuple[Name, ...], Field(min_length=1)]


class Route(_Frozen):
    name: Name | None = None
    match: RouteMatch = RouteMatch()
    notify: Annotated[tuple[Name, ...], Field(min_length=1)]
    escalate: Escalation | None = None
    #: hold non-critical alerts during quiet hours (critical ones always go out)
    quiet_hours: bool = True
    continue_: bool = Field(default=False, alias="continue")


class RetryConfig(_Frozen):
    """A failed delivery is retried with exponential backoff (``initial``, doubling up to
    ``maximum``) until ``give_up_after`` has passed since its first failed attempt, so an
    SMTP or webhook outage of hours loses nothing. ``attempts`` also caps the count of
    tries (default: no cap). A non-retriable failure (a refused password, a 5yz, a 4xx
    from a webhook) is final at once."""

    give_up_after: Duration = timedelta(hours=24)
    attempts: Annotated[int, Field(ge=1)] | None = None
    initial: Duration = timedelta(seconds=1)
    maximum: Duration = timedelta(minutes=5)


class NotifyConfig(_Frozen):
    console_url: str = "http://127.0.0.1:8080"
    timezone: str = "Europe/Brussels"
    quiet_hours: QuietHours | None = None
    smtp: SmtpConfig | None = None
    webhooks: tuple[WebhookConfig, ...] = ()
    alertmanager: AlertmanagerConfig | None = None
    contacts: dict[Name, Contact]
    routes: Annotated[tuple[Route, ...], Field(min_length=1)]
    retry: RetryConfig = RetryConfig()
    ledger: Path = Path("notify-ledger.db")
    #: at most this many deliveries in flight
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _references(self) -> NotifyConfig:
        hooks = {w.name for w in self.webhooks}
        for name, contact in self.contacts.items():
            if contact.webhook and contact.webhook not in hooks:
                raise ValueError(f"contacts.{name}.webhook: no webhook named {contact.webhook!r}")
            if contact.email and self.smtp is None:
                raise ValueError(f"contacts.{name}.email: set 'smtp' to send e-mail")
        for index, route in enumerate(self.routes):
            names = route.notify + (route.escalate.to if route.escalate else ())
            for name in names:
                if name not in self.contacts:
                    raise ValueError(f"routes.{index}: unknown contact {name!r}")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def routes_for(self, alert: Alert) -> list[Route]:
        matched = []
        for route in self.routes:
            if route.match.matches(alert):
                matched.append(route)
                if not route.continue_:
                    break
        return matched

    def webhook(self, name: str) -> WebhookConfig:
        return next(w for w in self.webhooks if w.name == name)


def config_from_mapping(
    document: Any, *, where: str = "<alerting>", key_lines: KeyLines | None = None
) -> NotifyConfig:
    try:
        return NotifyConfig.model_validate(document)
    except ValidationError as exc:
        parts = error_lines(exc, limit=5, root="<file>", key_lines=key_lines, model=NotifyConfig)
        raise ConfigError(f"{where}: " + "; ".join(parts)) from None


def load_config(path: Path | str) -> NotifyConfig:
    target = Path(path)
    try:
        document, key_lines = load_yaml(target, secret_keys=SECRET_KEYS)
    except YamlFileError as exc:
        raise ConfigError(str(exc)) from None
    try:
        document = expand_secrets(
            document, secret_keys=SECRET_KEYS, base=target.parent, key_lines=key_lines
        )
    except ExpansionError as exc:
        raise ConfigError(f"{target}: {exc}{key_lines.suffix(exc.at)}") from None
    config = config_from_mapping(document, where=str(target), key_lines=key_lines)
    if not config.ledger.is_absolute():
        config = config.model_copy(update={"ledger": target.parent / config.ledger})
    return config
