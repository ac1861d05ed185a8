"""Runs the console: Kafka feed + coalescing hub + aiohttp site, until a stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from climastream.kafkasec import KafkaSecurity
from console.auth import Credentials
from console.feed import FeedSettings, KafkaActionSink, KafkaFeed, load_site
from console.hub import Hub
from console.state import LiveState, StateLimits
from console.web import ConsoleApp, quiet_malformed_requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsoleSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    #: TLS and SASL of the feed and the alert-action producer
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    host: str = "127.0.0.1"
    port: int = 8450
    gateway_configs: tuple[Path, ...] = ()
    coalesce_interval_s: float = 0.5
    reference_zone: str | None = None
    secure_cookies: bool = False
    behind_proxy: bool = False
    spark_window: timedelta = timedelta(minutes=5)
    stale_after: timedelta = timedelta(seconds=60)
    feed: FeedSettings = field(default_factory=FeedSettings)


async def supervise(
    name: str,
    run: object,
    stop: asyncio.Event,
    on_error: Callable[[str], None] | None = None,
) -> None:
    """Re-run ``run(stop)`` after failures (broker outage) with capped backoff;
    ``on_error`` is told each failure, as the operator should see it."""
    backoff = 1.0
    while not stop.is_set():
        try:
            await run(stop)  # type: ignore[operator]
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed, retrying in %.0fs: %s", name, backoff, exc)
            if on_error is not None:
                on_error(f"{exc or exc.__class__.__name__}; retrying in {backoff:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 30.0)


async def serve(settings: ConsoleSettings, credentials: Credentials, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set. Prints the URL once listening."""
    state = LiveState(
        load_site(list(settings.gateway_configs)),
        limits=StateLimits(spark_window=settings.spark_window, stale_after=settings.stale_after),
        reference_zone=settings.reference_zone,
    )
    hub = Hub(state, interval=settings.coalesce_interval_s)
    feed = KafkaFeed(
        FeedSettings(
            bootstrap_servers=settings.bootstrap_servers,
            kafka_security=settings.kafka_security,
            backfill=settings.feed.backfill,
            max_records=settings.feed.max_records,
        ),
        state,
    )
    actions = KafkaActionSink(settings.bootstrap_servers, security=settings.kafka_security)
    console = ConsoleApp(
        hub,
        credentials,
        actions,
        secure_cookies=settings.secure_cookies,
        behind_proxy=settings.behind_proxy,
    )
    quiet_malformed_requests()
    runner = web.AppRunner(console.build(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    print(f"console: listening on http://{settings.host}:{settings.port}/", flush=True)
    tasks = [
        asyncio.create_task(supervise("kafka feed", feed.run, stop, state.feed_down)),
        asyncio.create_task(hub.run(stop)),
    ]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await actions.stop()
        await runner.cleanup()
