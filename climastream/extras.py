"""Helpers for optional dependencies installed through pip extras."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """A part was used without its pip extra; the message names the install command."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install '.[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module!r} is not installed; this command needs the '{extra}' extra: "
            f"pip install 'climastream[{extra}]'"
        ) from exc
