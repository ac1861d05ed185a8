"""How validation errors read: one ``key.path: message`` per problem the user can fix."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field, ValidationError

from climastream.validation import error_lines


class Item(BaseModel):
    size: int


class Doc(BaseModel):
    items: Annotated[tuple[Item, ...], Field(min_length=2)]


def _lines(data: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Doc.model_validate(data)
    return error_lines(caught.value)


def test_a_failing_item_is_not_also_reported_as_a_missing_one() -> None:
    lines = _lines({"items": [{"size": "big"}, {"size": 1}]})
    assert lines == [
        "items.0.size: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_too_few_items_written_is_still_reported() -> None:
    assert _lines({"items": [{"size": 1}]}) == [
        "items: Tuple should have at least 2 items after validation, not 1"
    ]
    assert _lines({"items": []}) == [
        "items: Tuple should have at least 2 items after validation, not 0"
    ]


def test_edge_config_error_names_only_the_bad_source_key(tmp_path: object) -> None:
    from pathlib import Path

    from edge.config import ConfigError, load_config

    path = Path(str(tmp_path)) / "gw.yaml"
    path.write_text(
        "gateway_id: gw-1\n"
        "sources:\n"
        "  - kind: simulated\n"
        "    devices: [{device_id: a, quantities: [temperature]}]\n"
        "    interval_s: soon\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "sources.0.interval_s" in message
    assert "at least 1 item" not in message
