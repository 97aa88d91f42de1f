"""The streamed listing: any split of the reply into chunks reads as the whole reply does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_atomscale._listing import ListingReader

ROWS = st.lists(
    st.fixed_dictionaries(
        {"sample_id": st.integers(1, 5) | st.sampled_from(["3", None])},
        optional={
            "layer_id": st.integers(0, 10**12),
            "composition_string": st.text(max_size=12),
            "element_dict": st.dictionaries(st.text(max_size=3), st.floats(allow_nan=False)),
            "sample_metadata": st.recursive(
                st.none() | st.integers() | st.text(max_size=5),
                lambda inner: (
                    st.lists(inner, max_size=2)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=2)
                ),
                max_leaves=4,
            ),
        },
    )
    | st.integers()
    | st.text(max_size=4),
    max_size=12,
)


def wanted(row: dict[str, Any]) -> bool:
    return row.get("sample_id") == 3


def read(body: bytes, cuts: list[int]) -> Any:
    reader = ListingReader(wanted)
    start = 0
    for cut in sorted(cuts):
        reader.feed(body[start:cut])
        start = cut
    reader.feed(body[start:])
    return reader.result()


@settings(max_examples=300, deadline=None)
@given(rows=ROWS, indent=st.sampled_from([None, 1]), data=st.data())
def test_any_chunking_keeps_exactly_the_wanted_rows_and_every_non_object(
    rows: list[Any], indent: int | None, data: st.DataObject
) -> None:
    body = json.dumps(rows, indent=indent, ensure_ascii=False).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    expected = [row for row in rows if not isinstance(row, dict) or wanted(row)]
    assert read(body, cuts) == expected


@pytest.mark.parametrize(
    "body",
    [b'{"rows": []}', b'"not a list"', b"42", b"null"],
)
def test_a_reply_that_is_not_an_array_is_handed_on_whole(body: bytes) -> None:
    assert read(body, [1, 2]) == json.loads(body)


@pytest.mark.parametrize(
    "body",
    [b"[{", b'[{"sample_id": 3}', b"<html>502</html>", b"[1, 2] 3", b'[{"a": tru}]', b"\xff["],
)
def test_a_broken_reply_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        read(body, [1])
