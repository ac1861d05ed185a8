"""How validation errors read to a person: one ``dotted.key: message`` per problem.

Every config loader and the contract name the offending key the same way; each caller
chooses its own prefix, separator and how many problems to show.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from climastream.yamlfile import KeyLines


def error_lines(
    exc: ValidationError,
    *,
    limit: int | None = None,
    root: str = "<root>",
    drop: Collection[str] = (),
    key_lines: KeyLines | None = None,
    model: type[BaseModel] | None = None,
) -> list[str]:
    """``key.path: message`` for each error (the first ``limit``).

    ``root`` names an error of the whole document (empty path); ``drop`` removes path
    segments that are not keys the user wrote: a tagged union's tag, right after a list
    item's index (``sources.0.serial.baudrate`` reads ``sources.0.baudrate``). With the
    ``key_lines`` of the YAML file, each line ends with `` (line N)``: the key's line, or
    for a missing key the line of the section that lacks it. With the validated ``model``,
    an unknown key is called that, with the key of its section it is closest to
    (``kafka.bootstrap_server: unknown key; did you mean 'bootstrap_servers'?``).
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
        message = error["msg"]
        if model is not None and error["type"] == "extra_forbidden":
            message = unknown_key(model, loc)
        lines.append(f"{where or root}: {message}{suffix}")
    return lines


def unknown_key(model: type[BaseModel], loc: Sequence[object]) -> str:
    """What to say about the key at ``loc`` that ``model`` does not have: the closest key
    its section has, or, when none is close, every one of them."""
    known = section_keys(model, loc[:-1])
    if not known:
        return "unknown key"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key; this section has: " + ", ".join(known)


def section_keys(model: type[BaseModel], loc: Sequence[object]) -> list[str]:
    """The keys of the section at pydantic error location ``loc`` of ``model`` (empty if
    the location cannot be followed: a plain mapping, a custom type)."""
    node: Any = model
    for part in loc:
        node = _follow(node, part)
        if node is None:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [f.alias or name for name, f in node.model_fields.items()]
    return []


def _unwrap(node: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` as ``X``."""
    while True:
        origin = get_origin(node)
        if origin is Annotated:
            node = get_args(node)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(node) if a is not type(None)]
            if len(members) != 1:
                return node
            node = members[0]
        else:
            return node


def _follow(node: Any, part: object) -> Any:
    """The type at ``part`` inside ``node`` (a model's field, a list item, a mapping
    value, or the member of a tagged union that ``part`` names)."""
    node = _unwrap(node)
    origin = get_origin(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    if origin in (Union, types.UnionType):  # a tag: the member whose Literal field is it
        for member in get_args(node):
            member = _unwrap(member)
            if isinstance(member, type) and issubclass(member, BaseModel):
                for field in member.model_fields.values():
                    literal = _unwrap(field.annotation)
                    if get_origin(literal) is Literal and part in get_args(literal):
                        return member
        return None
    args = get_args(node)
    if isinstance(part, int) and origin in (list, tuple, Sequence, frozenset, set) and args:
        return args[0]
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


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
