"""Per-panel coalescing between the live state and the browsers.

However fast records arrive, :class:`Hub` renders each dirty panel at most once per
``interval`` and hands the same bytes to every subscriber. A :class:`Subscription` holds at
most one pending message per panel (a newer snapshot replaces an unsent older one), so a
slow browser costs a fixed amount of memory and simply sees fewer, fresher frames.

The streams panel is rendered once per distinct :class:`~console.state.StreamsView` the
subscribers asked for (a zone, a device search), every other panel once for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import orjson

from console.state import ALL_STREAMS, PANELS, LiveState, StreamsView

log = logging.getLogger(__name__)


def _panel_view(panel: str, view: StreamsView) -> StreamsView:
    """``view`` for the streams panel; every other panel has one view, shared by all."""
    return view if panel == "streams" else ALL_STREAMS


class Subscription:
    """One browser's mailbox: the latest unsent snapshot per panel, its streams panel
    seen through ``view``."""

    def __init__(self, view: StreamsView = ALL_STREAMS) -> None:
        self.view = view
        self._pending: dict[str, bytes] = {}
        self._ready = asyncio.Event()
        self.replaced = 0

    def offer(self, panel: str, payload: bytes) -> None:
        if panel in self._pending:
            self.replaced += 1
        self._pending[panel] = payload
        self._ready.set()

    async def next(self, wait_s: float) -> dict[str, bytes]:
        """Wait up to ``wait_s`` seconds for snapshots; return and forget them ({} on timeout)."""
        if not self._pending:
            try:
                await asyncio.wait_for(self._ready.wait(), wait_s)
            except TimeoutError:
                return {}
        self._ready.clear()
        pending, self._pending = self._pending, {}
        return pending


class Hub:
    """Renders dirty panels every ``interval`` seconds and fans them out.

    ``refresh_every`` ticks, time-dependent panels (map staleness, gateway ages, stats) are
    re-rendered even without input, so a silent sensor visibly goes stale.
    """

    def __init__(self, state: LiveState, *, interval: float = 0.5, refresh_every: int = 10) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.state = state
        self.interval = interval
        self.refresh_every = refresh_every
        self._subscribers: set[Subscription] = set()
        self._latest: dict[str, bytes] = {}
        self.frames = 0
        self._ticks = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def render(self, panel: str, view: StreamsView = ALL_STREAMS) -> bytes:
        view = _panel_view(panel, view)
        payload = orjson.dumps(self.state.snapshot(panel, view))
        if view == ALL_STREAMS:
            self._latest[panel] = payload
        return payload

    def subscribe(self, view: StreamsView = ALL_STREAMS) -> Subscription:
        """A new mailbox primed with the current snapshot of every panel."""
        subscription = Subscription(view)
        for panel in PANELS:
            shared = _panel_view(panel, view) == ALL_STREAMS
            cached = self._latest.get(panel) if shared else None
            subscription.offer(panel, cached or self.render(panel, view))
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def tick(self) -> Iterable[str]:
        """Render and publish what changed since the last tick; return those panels."""
        self._ticks += 1
        dirty = self.state.take_dirty()
        if self._ticks % self.refresh_every == 0:
            dirty.update(("map", "gateways", "stats"))
        for panel in PANELS:
            if panel not in dirty:
                continue
            # the unfiltered render also primes new subscribers
            payloads = {ALL_STREAMS: self.render(panel)}
            self.frames += 1
            for subscription in self._subscribers:
                view = _panel_view(panel, subscription.view)
                payload = payloads.get(view)
                if payload is None:
                    payload = payloads[view] = self.render(panel, view)
                    self.frames += 1
                subscription.offer(panel, payload)
        return dirty

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            try:
                self.tick()
            except Exception:  # a rendering bug must not freeze every browser
                log.exception("rendering a panel failed")
