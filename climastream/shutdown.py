"""Clean shutdown for the long-running commands (gateway agent, sink, notifier, console)."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C) sets.

    Call it inside the running event loop; the command then drains and exits when it is set.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
