"""The write protocol's document and the guide agree on what is not guaranteed, row by row."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rows(text: str, heading: str) -> list[list[str]]:
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def test_the_guide_lists_the_protocols_non_guarantees_in_its_words_and_order() -> None:
    protocol = _rows(
        (ROOT / "docs" / "design" / "write-protocol.md").read_text(), "## What is not guaranteed"
    )
    guide = _rows(
        (ROOT / "docs" / "guides" / "exactly-once.md").read_text(),
        "## What is guaranteed and what is not",
    )
    assert len(protocol) >= 8
    # case, why, ..., what happens: the guide adds a "guaranteed" column before the last,
    # and may say after the protocol's words which test pins a row.
    assert [(row[0], row[1]) for row in guide] == [(row[0], row[1]) for row in protocol]
    for said, written in zip(guide, protocol, strict=True):
        assert said[-1].startswith(written[-1]), (said[0], said[-1], written[-1])
