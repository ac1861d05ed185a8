"""Reading the YAML files people edit: duplicate keys refused, and where each key is.

Every config file of the system (gateway, stream, alert rules, notifier, sink, console
auth, simulator fleet, LoRaWAN layouts) is read by :func:`load_yaml`:

* A key written twice in one mapping is an error naming both lines. Plain YAML keeps the
  last one silently, so half of an edited section would vanish.
* The result comes with a :class:`KeyLines` index, so a validation error can say on which
  line the offending key is (``sources.1.baudrate: ... (line 42)``).
* Files that hold secrets (gateway, notifier) pass the document through
  :func:`expand_secrets`: ``${VAR}`` from the environment and ``<secret>_file`` keys, so a
  password need not be written in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "SECRET_NOT_READ",
    "ExpansionError",
    "KeyLines",
    "StrictLoader",
    "YamlFileError",
    "expand_secrets",
    "load_yaml",
    "parse_yaml",
]


class YamlFileError(ValueError):
    """The file cannot be read or is not valid YAML (the message names the file)."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key written twice; its message quotes the key, never a value."""


def _unique_keys(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping says what is wrong
            break
        if first is not None:  # also on one line: "{path: a, path: b}"
            raise _DuplicateKey(
                "while reading a mapping",
                node.start_mark,
                f"found key {key!r} a second time (first on line {first + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys)


class KeyLines:
    """The 1-based line of each key (and list item) of a document, by its path.

    A path is the tuple of keys and list indices from the top, as pydantic reports the
    location of an error: ``("sources", 1, "baudrate")``.
    """

    def __init__(self, lines: Mapping[tuple[Any, ...], int | None] | None = None) -> None:
        self._lines: dict[tuple[Any, ...], int | None] = dict(lines or {})

    @classmethod
    def of(cls, node: yaml.Node | None, loader: yaml.SafeLoader) -> KeyLines:
        """The lines of a composed document; ``loader`` constructs its keys."""
        lines: dict[tuple[Any, ...], int | None] = {}
        if node is not None:
            _index(node, (), lines, loader)
        return cls(lines)

    def line(self, path: Sequence[Any]) -> int | None:
        """The line of ``path``, or of its nearest written ancestor (a missing key is
        reported at the section that lacks it); None for the document itself."""
        key = tuple(path)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return None

    def suffix(self, path: Sequence[Any]) -> str:
        """`` (line N)`` to end an error message about ``path`` with, or "" if it has no
        line in the file."""
        line = self.line(path)
        return f" (line {line})" if line is not None else ""

    def overridden(self, path: Sequence[Any]) -> None:
        """``path`` was set from outside the file (a command-line option): its errors
        have no line in the file, nor do those of anything below it."""
        self._lines[tuple(path)] = None

    def alias(self, path: Sequence[Any], written: Sequence[Any]) -> None:
        """``path`` was built from the key at ``written`` (``password`` read from
        ``password_file``): its errors point at that key's line."""
        self._lines[tuple(path)] = self.line(written)

    def __len__(self) -> int:
        return len(self._lines)


def _index(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int | None],
    loader: yaml.SafeLoader,
) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            # the key as the document has it (``1:`` is the int 1), as pydantic reports it
            try:
                key = loader.construct_object(key_node)
            except yaml.YAMLError:
                key = key_node.value
            out.setdefault((*path, key), key_node.start_mark.line + 1)
            _index(value_node, (*path, key), out, loader)
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            out.setdefault((*path, position), item.start_mark.line + 1)
            _index(item, (*path, position), out, loader)


def parse_yaml(
    text: str, where: str = "<yaml>", *, secret_keys: Collection[str] = ()
) -> tuple[Any, KeyLines]:
    """Parse ``text``; raise :class:`YamlFileError` naming ``where`` and the line.

    The error shows the offending line with a caret, as PyYAML does, except a line that may
    hold a secret: one with a key in ``secret_keys`` (block or flow style, or in a comment)
    and the lines indented below it (a value continued there). For such a line it gives the
    line and column only, and hides what PyYAML's message quotes of the document (an alias,
    a tag, a character), so a secret in a broken file is never printed.
    """
    try:
        loader = StrictLoader(text)  # refuses a character YAML does not allow
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise YamlFileError(
            f"{where}: not valid YAML: character #x{exc.character:04x} is not allowed "
            f"(line {line}, column {column})"
        ) from None
    try:
        node = loader.get_single_node()
        document = loader.construct_document(node) if node is not None else None
        lines = KeyLines.of(node, loader)
    except yaml.YAMLError as exc:
        detail = _describe(exc, _secret_lines(text, secret_keys))
        raise YamlFileError(f"{where}: not valid YAML: {detail}") from None
    finally:
        loader.dispose()
    return document, lines


def load_yaml(path: Path | str, *, secret_keys: Collection[str] = ()) -> tuple[Any, KeyLines]:
    """Read and parse a YAML file; raise :class:`YamlFileError` naming the file (and never
    printing a line with one of ``secret_keys``: :func:`parse_yaml`)."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(f"{target}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"{target}: not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text, str(target), secret_keys=secret_keys)


def _secret_lines(text: str, secret_keys: Collection[str]) -> set[int]:
    """0-based numbers of the lines that may hold a secret value.

    A line with a secret key followed by ``:`` (``password:``, ``"password":``, inside
    ``{...}``, or commented out), and every line after it that is blank or indented deeper
    than it (a multi-line value). Generous on purpose: a hidden line costs a caret.
    """
    if not secret_keys:
        return set()
    keys = "|".join(re.escape(k) for k in sorted(secret_keys, key=len, reverse=True))
    key = re.compile(rf"(?<![\w.-])[\"']?(?:{keys})[\"']?\s*:")
    hidden: set[int] = set()
    depth: int | None = None  # indentation of the secret line whose value may continue
    for number, line in enumerate(text.splitlines()):
        indent = len(line) - len(line.lstrip(" \t"))
        if depth is not None and (not line.strip() or indent > depth):
            hidden.add(number)
            continue
        depth = None
        if key.search(line):
            hidden.add(number)
            depth = indent
    return hidden


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _describe(exc: yaml.YAMLError, hidden: set[int]) -> str:
    """PyYAML's message, its marks as ``line N, column M``; the snippet of a line only when
    it is not in ``hidden``, and the document's text quoted in it hidden there too."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc).replace('"<unicode string>", ', "")  # the file is named in front
    context, problem = exc.context_mark, exc.problem_mark
    # what follows a secret context (a quoted value left open, say) may be the secret too
    after_secret = context is not None and context.line in hidden

    def secret(mark: Any) -> bool:
        return mark is not None and (mark.line in hidden or after_secret)

    def text(message: str, mark: Any) -> str:
        if secret(mark) and not isinstance(exc, _DuplicateKey):  # that one quotes a key
            return _QUOTED.sub("'...'", message)
        return message

    def at(mark: Any) -> str:
        where = f"  in line {mark.line + 1}, column {mark.column + 1}"
        if secret(mark):
            return f"{where} (a line with a secret: not shown)"
        snippet = mark.get_snippet()
        return f"{where}:\n{snippet}" if snippet else where

    parts = []
    if exc.context is not None:
        parts.append(text(exc.context, context if context is not None else problem))
    if context is not None and (
        problem is None or (context.line, context.column) != (problem.line, problem.column)
    ):
        parts.append(at(context))
    if exc.problem is not None:
        parts.append(text(exc.problem, problem))
    if problem is not None:
        parts.append(at(problem))
    if exc.note is not None:
        parts.append(exc.note)
    return "\n".join(parts)


# --------------------------------------------------------------------------- secrets

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


#: what a secret holds when read with ``read_secrets=False``
SECRET_NOT_READ = "<not read>"


class ExpansionError(ValueError):
    """A ``${VAR}`` or ``<secret>_file`` that cannot be resolved; ``at`` is the key's path.

    ``str()`` is ``<dotted path>: <problem>``; the caller adds the file and the line."""

    def __init__(self, at: tuple[Any, ...], problem: str) -> None:
        super().__init__(f"{'.'.join(map(str, at))}: {problem}")
        self.at = at


def expand_secrets(
    node: Any,
    *,
    secret_keys: Collection[str],
    base: Path,
    key_lines: KeyLines,
    read_secrets: bool = True,
) -> Any:
    """``node`` with ``${VAR}`` expanded and ``<secret>_file`` keys read; a new document.

    * ``${VAR}`` anywhere in a string is the environment variable ``VAR``; an unset one is
      an error naming the key (never an empty password). ``${VAR:-default}`` falls back
      to ``default``.
    * For each key in ``secret_keys``, ``<key>_file: /path`` reads the secret from that
      file (systemd credentials, Docker and Kubernetes secrets), relative to ``base``,
      dropping one trailing newline. It becomes ``<key>``, whose later validation errors
      ``key_lines`` points at the ``<key>_file`` line. Giving both is an error.

    With ``read_secrets=False`` (a program that reads the file for something else, such as
    the console for device positions) a secret key or ``<key>_file`` becomes ``<key>`` =
    :data:`SECRET_NOT_READ`: its variable need not be set nor its file readable there.

    Raises :class:`ExpansionError` naming the key; the message never holds a secret.
    """

    def read(path: tuple[Any, ...], where: Any) -> str:
        secret_path = Path(str(where))
        if not secret_path.is_absolute():
            secret_path = base / secret_path
        try:
            return secret_path.read_text(encoding="utf-8").removesuffix("\n")
        except OSError as exc:
            raise ExpansionError(path, f"cannot read secret file: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ExpansionError(
                path, f"secret file is not UTF-8 text (byte {exc.start})"
            ) from None

    def walk(node: Any, at: tuple[Any, ...]) -> Any:
        if isinstance(node, dict):
            out: dict[Any, Any] = {}
            for key, value in node.items():
                path = (*at, key)
                if isinstance(key, str) and key.endswith("_file") and key[:-5] in secret_keys:
                    name = key[:-5]
                    if name in node:
                        raise ExpansionError(
                            path,
                            f"give either {name} or {key}, not both (which one wins would be "
                            "a guess)",
                        )
                    out[name] = read(path, walk(value, path)) if read_secrets else SECRET_NOT_READ
                    key_lines.alias((*at, name), path)
                elif not read_secrets and key in secret_keys:
                    out[key] = SECRET_NOT_READ
                else:
                    out[key] = walk(value, path)
            return out
        if isinstance(node, list):
            return [walk(item, (*at, index)) for index, item in enumerate(node)]
        if isinstance(node, str) and "${" in node:

            def sub(match: re.Match[str]) -> str:
                value = os.environ.get(match.group(1), match.group(2))
                if value is None:
                    raise ExpansionError(at, f"environment variable {match.group(1)} is not set")
                return value

            return _ENV_REF.sub(sub, node)
        return node

    return walk(node, ())
