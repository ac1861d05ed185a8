"""Delivery channels: one ``send`` per notification, errors translated at the boundary.

A channel sends exactly one message per call and raises :class:`DeliveryError` on failure
(``retriable`` says whether trying again can help: a refused password will not fix
itself, a timeout might). Retries, backoff and bookkeeping live in the notifier service,
written once for every channel.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol

import orjson

from climastream.extras import require
from sinks.notify.config import AlertmanagerConfig, SmtpConfig, WebhookConfig
from sinks.notify.message import Kind, Notification

__all__ = [
    "AlertmanagerChannel",
    "Channel",
    "DeliveryError",
    "EmailChannel",
    "WebhookChannel",
    "sign",
]

SIGNATURE_HEADER = "X-Climastream-Signature"
TIMESTAMP_HEADER = "X-Climastream-Timestamp"
DELIVERY_HEADER = "X-Climastream-Delivery"

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A delivery failed; ``retriable`` is False when retrying cannot help."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class Channel(Protocol):
    """Sends one notification to one recipient. May be called concurrently."""

    name: str

    async def send(self, notification: Notification, recipient: str, delivery_id: str) -> None:
        """Deliver or raise :class:`DeliveryError`. Never retries by itself."""

    async def close(self) -> None:
        """Release connections; idempotent."""


class EmailChannel:
    """E-mail over SMTP with STARTTLS (or implicit TLS) and AUTH, via stdlib smtplib in a
    worker thread (one connection per message: alerts are rare, and a fresh connection
    cannot be left half-broken by a previous failure)."""

    name = "email"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.config.ca_file) if self.config.ca_file else None
        )
        return context

    def _message(
        self, notification: Notification, recipient: str, delivery_id: str
    ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = recipient
        message["Subject"] = notification.subject
        message["Message-ID"] = make_msgid(idstring=delivery_id[:40], domain="climastream")
        # mail clients thread every message of one incident under one reference
        started = notification.alert.started_at
        message["References"] = (
            f"<{notification.alert.fingerprint}.{started:%Y%m%d%H%M%S}@climastream>"
        )
        message["X-Climastream-Fingerprint"] = notification.alert.fingerprint
        message["X-Climastream-Kind"] = notification.kind.value
        message[DELIVERY_HEADER] = delivery_id
        message.set_content(notification.text)
        return message

    def _send_blocking(self, message: EmailMessage, recipient: str) -> None:
        config = self.config
        try:
            if config.ssl:
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    config.host, config.port, timeout=config.timeout_s, context=self._tls()
                )
            else:
                client = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
            try:
                client.ehlo()
                if config.starttls and not config.ssl:
                    client.starttls(context=self._tls())
                    client.ehlo()
                if config.username:
                    password = config.password.get_secret_value() if config.password else ""
                    client.login(config.username, password)
                client.send_message(message, to_addrs=[recipient])
            finally:
                # Not ``with client``: its exit raises when QUIT is not answered 221. Once
                # send_message returned, the server answered 250 to the message's DATA and
                # took responsibility for it (RFC 5321 4.1.1.4); a failing QUIT must not turn
                # that into a retriable error that sends the message again.
                _quit(client)
        except smtplib.SMTPAuthenticationError as exc:
            # 454 is a temporary failure (RFC 4954 6); 535 and the like will not fix themselves
            raise DeliveryError(
                f"smtp auth refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                retriable=_transient(exc.smtp_code),
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            # 4yz is transient, e.g. 451 greylisting (RFC 5321 4.2.1): try again later
            refusals: dict[str, tuple[int, bytes]] = exc.recipients
            codes = [code for code, _ in refusals.values()]
            reasons = "; ".join(
                f"{address}: {code} {_text(reply)}" for address, (code, reply) in refusals.items()
            )
            raise DeliveryError(
                f"smtp recipient refused: {reasons or recipient}",
                retriable=bool(codes) and all(_transient(code) for code in codes),
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"smtp {exc.smtp_code}: {exc.smtp_error!r}", retriable=_transient(exc.smtp_code)
            ) from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"smtp {type(exc).__name__}: {exc}") from None

    async def send(self, notification: Notification, recipient: str, delivery_id: str) -> None:
        message = self._message(notification, recipient, delivery_id)
        await asyncio.to_thread(self._send_blocking, message, recipient)

    async def close(self) -> None:
        return None


def _transient(code: int) -> bool:
    """A 4yz SMTP reply is a transient failure: the same command may succeed later."""
    return 400 <= code < 500


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _quit(client: smtplib.SMTP) -> None:
    """End the SMTP session politely; whatever the server answers, the connection closes
    and nothing is raised (an answer to QUIT decides nothing about the message)."""
    try:
        code, reply = client.quit()
        if code != 221:
            log.debug("smtp QUIT answered %s %r", code, reply)
    except (smtplib.SMTPException, OSError) as exc:
        log.debug("smtp QUIT failed: %s: %s", type(exc).__name__, exc)
    finally:
        client.close()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``timestamp + "." + body`` (replay-resistant)."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _Http:
    def __init__(self) -> None:
        self._session: Any = None

    async def session(self) -> Any:
        if self._session is None:
            aiohttp = require("aiohttp", "sinks")
            self._session = aiohttp.ClientSession()
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> None:
        aiohttp = require("aiohttp", "sinks")
        session = await self.session()
        try:
            # never follow a redirect: a 301/302/303 turns the POST into a GET without the
            # body, and the 200 at its end would record an alert nobody got as sent
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", **headers},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                if 300 <= response.status < 400:
                    location = response.headers.get("Location")
                    raise DeliveryError(
                        f"http {response.status} redirect to {location!r}: the configured URL "
                        f"{url!r} is wrong, set it to where the server points",
                        retriable=False,
                    )
                if response.status >= 300:
                    text = (await response.text())[:200]
                    retriable = response.status >= 500 or response.status in (408, 429)
                    raise DeliveryError(f"http {response.status}: {text}", retriable=retriable)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"http {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class WebhookChannel:
    """A JSON POST signed with HMAC-SHA256 (Teams/Slack/Matrix/ntfy bridges, or your own).

    Receivers check ``X-Climastream-Signature`` = :func:`sign` (secret, the
    ``X-Climastream-Timestamp`` header, the raw body) and may de-duplicate on
    ``X-Climastream-Delivery``, which is stable across retries.
    """

    name = "webhook"

    def __init__(self, hooks: dict[str, WebhookConfig], clock: Any = time.time) -> None:
        self.hooks = hooks
        self.clock = clock
        self._http = _Http()

    async def send(self, notification: Notification, recipient: str, delivery_id: str) -> None:
        hook = self.hooks[recipient]
        body = orjson.dumps(notification.payload(recipient))
        timestamp = str(int(self.clock()))
        headers = {
            SIGNATURE_HEADER: sign(hook.secret.get_secret_value().encode(), timestamp, body),
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: delivery_id,
        }
        await self._http.post(hook.url, body, headers, hook.timeout_s)

    async def close(self) -> None:
        await self._http.close()


class AlertmanagerChannel:
    """Forward to Prometheus Alertmanager's v2 API (``POST /api/v2/alerts``).

    Alertmanager de-duplicates by label set, so re-sending is harmless; a resolution sets
    ``endsAt``.
    """

    name = "alertmanager"

    def __init__(self, config: AlertmanagerConfig) -> None:
        self.config = config
        self._http = _Http()

    @staticmethod
    def body(notification: Notification) -> list[dict[str, Any]]:
        alert = notification.alert
        labels = {
            "alertname": alert.rule_id,
            "fingerprint": alert.fingerprint,
            "severity": alert.severity.value,
            "source": "climastream",
        }
        for name in ("zone", "team", "device_id", "gateway_id", "kpi_id"):
            value = getattr(alert, name)
            if value:
                labels[name] = value
        item: dict[str, Any] = {
            "labels": labels,
            "annotations": {"summary": alert.summary, "description": notification.text},
            "startsAt": alert.started_at.isoformat(),
            "generatorURL": notification.links["view"],
        }
        if notification.kind is Kind.RESOLVED:
            item["endsAt"] = alert.updated_at.isoformat()
        return [item]

    async def send(self, notification: Notification, recipient: str, delivery_id: str) -> None:
        url = self.config.url.rstrip("/") + "/api/v2/alerts"
        await self._http.post(url, orjson.dumps(self.body(notification)), {}, self.config.timeout_s)

    async def close(self) -> None:
        await self._http.close()
