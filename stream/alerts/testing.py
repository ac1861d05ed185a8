"""A harness for the real thing: alert engine + notifier as processes on a real stack, with a
real SMTP server (STARTTLS + AUTH) and a real webhook receiver.

Used by the integration tests and ``benchmarks/bench_alerts.py``; ships in the package so
an operator can rehearse a rules/routing change the same way. Needs the dev/all extras
(aiosmtpd, aiohttp, aiokafka).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from climastream.contract import encode
from sinks.notify.testing import ReceivedMail, RecordingSmtpServer, RecordingWebhookServer

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "hook-secret-for-tests"


class KafkaPublisher:
    """A long-lived aiokafka producer on its own loop thread (sync API for tests)."""

    def __init__(self, bootstrap: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._producer: Any = None
        self._run(self._start(bootstrap))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _start(self, bootstrap: str) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await self._producer.start()

    def send(self, topic: str, record: BaseModel) -> float:
        """Produce one record and wait for the broker's ack; returns the send time."""
        sent_at = time.time()
        key = getattr(record, "key", None)
        self._run(self._producer.send_and_wait(topic, encode(record), key=key))
        return sent_at

    def close(self) -> None:
        self._run(self._producer.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class AlertingSystem:
    """Engine + notifier processes wired to a stack, an SMTP server and a webhook receiver."""

    def __init__(
        self,
        bootstrap: str,
        workdir: Path,
        rules: dict[str, Any],
        routes: list[dict[str, Any]],
        contacts: dict[str, Any],
        run_id: str,
    ) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.run_id = run_id
        self.smtp = RecordingSmtpServer(workdir).start()
        self.webhook = RecordingWebhookServer(WEBHOOK_SECRET).start()
        self.rules_path = workdir / "rules.yaml"
        self.rules_path.write_text(yaml.safe_dump(rules))
        self.config_path = workdir / "alerting.yaml"
        # the credentials as a deployment keeps them: the SMTP password in a secret file,
        # the webhook's HMAC key in the notifier's environment (see _spawn)
        (workdir / "smtp-password").write_text(self.smtp.password + "\n")
        self.config_path.write_text(
            yaml.safe_dump(
                {
                    "console_url": "http://console.test/console",
                    "timezone": "Europe/Brussels",
                    "smtp": {
                        "host": "127.0.0.1",
                        "port": self.smtp.port,
                        "starttls": True,
                        "username": self.smtp.username,
                        "password_file": "smtp-password",
                        "from": "alerts@city.test",
                        "ca_file": str(self.smtp.cert),
                    },
                    "webhooks": [
                        {
                            "name": "chat",
                            "url": f"{self.webhook.url}/hook",
                            "secret": "${CLIMASTREAM_TEST_WEBHOOK_SECRET}",
                        }
                    ],
                    "contacts": contacts,
                    "routes": routes,
                    "retry": {"attempts": 5, "initial": "0.2s", "maximum": "2s"},
                    "ledger": str(workdir / "ledger.db"),
                }
            )
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.publisher = KafkaPublisher(bootstrap)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "CLIMASTREAM_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "climastream.cli", "--log-level", "INFO", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workdir,
        )
        log.close()

    def start_engine(self) -> None:
        ready = self.workdir / "engine.ready"
        ready.unlink(missing_ok=True)
        self._spawn(
            "engine",
            [
                "alerts",
                "engine",
                "--kafka",
                self.bootstrap,
                "--rules",
                str(self.rules_path),
                "--app-id",
                f"alerts-{self.run_id}",
                "--data-dir",
                str(self.workdir / "faust"),
                "--tick",
                "0.25",
                "--ready-file",
                str(ready),
            ],
        )
        self._wait_ready("engine", ready)

    def start_notifier(self) -> None:
        ready = self.workdir / "notify.ready"
        ready.unlink(missing_ok=True)
        self._spawn(
            "notify",
            [
                "alerts",
                "notify",
                "--kafka",
                self.bootstrap,
                "--config",
                str(self.config_path),
                "--group",
                f"notify-{self.run_id}",
                "--ready-file",
                str(ready),
            ],
        )
        self._wait_ready("notify", ready)

    def _wait_ready(self, name: str, ready: Path) -> None:
        def check() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {proc.returncode}:\n"
                    + (self.workdir / f"{name}.log").read_text()[-3000:]
                )
            return ready.exists()

        wait_for(check, 90, f"{name} ready")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.publisher.close()
        self.smtp.stop()
        self.webhook.stop()

    def mails(
        self, predicate: Callable[[ReceivedMail], bool] = lambda m: True
    ) -> list[ReceivedMail]:
        return [m for m in self.smtp.received() if predicate(m)]
