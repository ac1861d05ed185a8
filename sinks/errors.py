"""The sink's typed error tree.

Every failure the writer can meet is translated at the HTTP boundary into one of these, so
the runner decides by type, never by parsing messages:

* :class:`RetriableWriteError` (``retriable = True``): keep the batch, back off, try again.
  :class:`BackpressureError` is the database asking us to slow down (429/503) and carries
  its ``Retry-After``; :class:`TransportError` is a refused or broken connection or a
  timeout; :class:`ServerError` is any other 5xx.
* :class:`PartialWriteError` (400/422): the database refused some lines of the batch. Not
  retriable as is; the runner bisects the batch to find the refused lines.
* :class:`FatalWriteError` (``retriable = False``): retrying cannot help and carrying on
  would lose data, so the sink stops with this message. :class:`AuthError` is 401/403 and
  names the token and org; a 404 names the bucket or org that does not exist.
"""

from __future__ import annotations


class SinkError(Exception):
    """Base of every sink error. ``retriable`` says whether the same request may succeed."""

    retriable: bool = False


class WriteError(SinkError):
    """A write request failed; ``status`` is the HTTP status (0 when none was received)."""

    def __init__(self, message: str, *, status: int = 0, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RetriableWriteError(WriteError):
    retriable = True


class TransportError(RetriableWriteError):
    """No HTTP answer: connection refused or reset, DNS, timeout."""


class ServerError(RetriableWriteError):
    """A 5xx other than 503: the database failed, the batch is intact, try again."""


class BackpressureError(RetriableWriteError):
    """429 or 503: the database is overloaded or starting. ``retry_after`` in seconds, if sent."""

    def __init__(
        self, message: str, *, status: int, body: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.retry_after = retry_after


class PartialWriteError(WriteError):
    """400/422: at least one line of the request was refused (syntax, field type conflict,
    outside retention). InfluxDB may have stored the other lines ("partial write"); the
    runner bisects the batch to find the refused lines and dead-letters exactly those."""


class FatalWriteError(WriteError):
    """Retrying cannot succeed (wrong URL, missing bucket, payload limits); stop the sink."""


class AuthError(FatalWriteError):
    """401/403: the token is wrong, expired, or lacks write permission on the bucket/org."""


class ConfigError(SinkError):
    """The sink configuration is invalid; the message names the key and the file."""
