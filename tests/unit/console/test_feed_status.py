"""With Kafka unreachable the console looked live and stayed empty: the stats panel (the
page's header) now says that no data is coming, and why."""

from __future__ import annotations

import asyncio
import socket

from console.feed import FeedSettings, KafkaFeed
from console.server import supervise
from console.state import LiveState


def test_the_stats_panel_says_whether_the_feed_reads_kafka() -> None:
    state = LiveState()
    assert state.snapshot("stats")["feed"] == {"connected": False, "error": None}
    state.take_dirty()
    state.feed_down("cannot reach Kafka at 127.0.0.1:9092; retrying in 1s")
    assert "stats" in state.take_dirty()
    assert state.snapshot("stats")["feed"]["error"].startswith("cannot reach Kafka at")
    state.feed_up()
    assert state.snapshot("stats")["feed"] == {"connected": True, "error": None}


async def test_an_unreachable_broker_reaches_the_page_as_one_plain_sentence() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{sock.getsockname()[1]}"
    state = LiveState()
    stop = asyncio.Event()

    def failed(error: str) -> None:
        state.feed_down(error)
        stop.set()  # one failure is enough here

    feed = KafkaFeed(FeedSettings(bootstrap_servers=nowhere), state)
    await supervise("kafka feed", feed.run, stop, failed)
    shown = state.snapshot("stats")["feed"]
    assert shown["connected"] is False
    assert shown["error"].startswith(f"cannot reach Kafka at {nowhere}; is it running?")
    assert shown["error"].endswith("; retrying in 1s")
