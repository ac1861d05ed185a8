"""How validation errors read to a person: one ``dotted.key: message`` per problem.

Every config loader and the contract name the offending key the same way; each caller
chooses its own prefix, separator and how many problems to show.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from climastream.yamlfile import KeyLines


def error_lines(
    exc: ValidationError,
    *,
    limit: int | None = None,
    root: str = "<root>",
    drop: Collection[str] = (),
    key_lines: KeyLines | None = None,
) -> list[str]:
    """``key.path: message`` for each error (the first ``limit``).

    ``root`` names an error of the whole document (empty path); ``drop`` removes path
    segments that are not keys the user wrote: a tagged union's tag, right after a list
    item's index (``sources.0.serial.baudrate`` reads ``sources.0.baudrate``). With the
    ``key_lines`` of the YAML file, each line ends with `` (line N)``: the key's line, or
    for a missing key the line of the section that lacks it.
    """
    lines = []
    errors = [e for e in exc.errors(include_url=False) if not _only_echoes_items(e)]
    for error in errors[:limit]:
        loc = error["loc"]
        # a tag comes right after the item's index: a key of that name elsewhere (an MQTT
        # device called "serial") is the user's, and stays
        path = [
            p for i, p in enumerate(loc) if not (p in drop and i and isinstance(loc[i - 1], int))
        ]
        where = key_path(path)
        suffix = key_lines.suffix(path) if key_lines is not None else ""
        lines.append(f"{where or root}: {error['msg']}{suffix}")
    return lines


def key_path(path: Sequence[object]) -> str:
    """``sources.1.baudrate``: a key's path as error messages name it."""
    return ".".join(_segment(p) for p in path)


_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_.:\-\[\]]{1,64}")


def _segment(part: object) -> str:
    """A path segment as written, or quoted when it could smuggle anything into a log line
    (a hostile dict key with a newline, say)."""
    text = str(part)
    return text if _PLAIN_SEGMENT.fullmatch(text) else repr(text)[:80]


def _only_echoes_items(error: Any) -> bool:
    """A collection "too short after validation" only because some items failed.

    The user wrote enough items; the failing items have their own errors, and "should
    have at least 1 item, not 0" would only send them looking for a missing one.
    """
    if error["type"] != "too_short":
        return False
    written = error.get("input")
    minimum = (error.get("ctx") or {}).get("min_length")
    try:
        return minimum is not None and len(written) >= minimum
    except TypeError:
        return False
