"""sd_notify without dependencies: READY, WATCHDOG and STOPPING datagrams to systemd.

systemd passes ``NOTIFY_SOCKET`` to a ``Type=notify`` service. Outside systemd the variable
is absent and :func:`notify` does nothing. The watchdog ping is sent from the event loop,
so a wedged loop stops the pings and systemd restarts the agent (``WatchdogSec=``).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send one notification; returns False when there is no socket or sending failed."""
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify failed path=%s error=%s", path, exc)
        return False
    return True
