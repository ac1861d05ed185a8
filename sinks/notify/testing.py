"""Real local receivers for notifier tests, benchmarks and ``--test`` setups.

- :class:`RecordingSmtpServer`: aiosmtpd on a free loopback port, with STARTTLS required
  and AUTH LOGIN/PLAIN (so the e-mail channel's TLS and auth paths really run);
- :class:`RecordingWebhookServer`: an aiohttp server that checks the HMAC signature of
  each POST and records it.

Both run in their own thread and event loop, and record what arrived with the arrival
time (``time.time()``), so a benchmark can measure end-to-end latency.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hmac
import logging
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import orjson

from sinks.notify.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

__all__ = ["ReceivedMail", "RecordingSmtpServer", "RecordingWebhookServer", "self_signed_cert"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (openssl CLI); returns (cert, key)."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass(frozen=True)
class ReceivedMail:
    received_at: float
    sender: str
    recipients: tuple[str, ...]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def kind(self) -> str:
        return str(self.message["X-Climastream-Kind"])

    @property
    def fingerprint(self) -> str:
        return str(self.message["X-Climastream-Fingerprint"])

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        return str(part.get_content()) if part is not None else ""


class _QuietDeprecation(logging.Filter):
    """aiosmtpd logs a deprecation of its own attribute on every AUTH; not our concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietDeprecation())


class RecordingSmtpServer:
    """An SMTP server that requires STARTTLS and AUTH, and keeps every message it accepts.

    Faults for tests (each a full reply line such as ``"451 4.7.1 Greylisted"``; None is
    normal behaviour, and they may be changed while the server runs): ``rcpt_reply``
    refuses every recipient with it, ``auth_reply`` answers every AUTH with it, and
    ``quit_reply`` answers QUIT with it (after the message was accepted).
    """

    def __init__(
        self,
        directory: Path,
        username: str = "climastream",
        password: str = "s3cret",
        *,
        rcpt_reply: str | None = None,
        auth_reply: str | None = None,
        quit_reply: str | None = None,
    ):
        self.directory = directory
        self.username, self.password = username, password
        self.rcpt_reply, self.auth_reply, self.quit_reply = rcpt_reply, auth_reply, quit_reply
        self.port = free_port()
        self.cert, self.key = self_signed_cert(directory)
        self.messages: list[ReceivedMail] = []
        self.auth_failures = 0
        self._lock = threading.Lock()
        self._controller: Any = None

    def start(self) -> RecordingSmtpServer:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        server = self

        class Handler:
            async def handle_RCPT(
                self, smtp: Any, session: Any, envelope: Any, address: str, options: Any
            ) -> str:
                if server.rcpt_reply is not None:
                    return server.rcpt_reply
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(options)
                return "250 OK"

            async def handle_QUIT(self, smtp: Any, session: Any, envelope: Any) -> str:
                return server.quit_reply or "221 Bye"

            async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                with server._lock:
                    server.messages.append(
                        ReceivedMail(
                            time.time(), envelope.mail_from, tuple(envelope.rcpt_tos), message
                        )
                    )
                return "250 OK"

        def authenticator(
            smtp: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
        ) -> Any:
            if server.auth_reply is not None:
                return AuthResult(success=False, handled=False, message=server.auth_reply)
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == server.username.encode()
                and auth_data.password == server.password.encode()
            )
            if not ok:
                server.auth_failures += 1
            return AuthResult(success=ok, handled=False)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self._controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticator,
            auth_require_tls=True,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self.messages)


@dataclass
class ReceivedHook:
    received_at: float
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class RecordingWebhookServer:
    """An aiohttp server recording POSTs and checking their HMAC signature with ``secret``."""

    secret: str
    status: int = 200
    #: answer 401 to unsigned or badly signed POSTs (off: record everything, e.g. Alertmanager)
    verify: bool = True
    port: int = field(default_factory=free_port)
    hooks: list[ReceivedHook] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: Any = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RecordingWebhookServer:
        from aiohttp import web

        async def receive(request: web.Request) -> web.Response:
            body = await request.read()
            timestamp = request.headers.get(TIMESTAMP_HEADER, "")
            expected = sign(self.secret.encode(), timestamp, body)
            ok = hmac.compare_digest(expected, request.headers.get(SIGNATURE_HEADER, ""))
            with self._lock:
                self.hooks.append(
                    ReceivedHook(time.time(), request.path, dict(request.headers), body, ok)
                )
            return web.Response(status=self.status if ok or not self.verify else 401)

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", receive)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def received(self) -> list[ReceivedHook]:
        with self._lock:
            return list(self.hooks)
