"""Read the organisation's listing as it arrives, keeping only the rows a look-up needs.

`GET /target-materials/` answers with every layer of the organisation, and a look-up
needs the few rows of one target material. Decoding the whole reply first would hold
all of it in memory at once, 19 MB of JSON and several times that as Python objects for
50,000 rows, growing with the organisation. `ListingReader` decodes the array one item
at a time as chunks come in and keeps only the items its filter accepts, so a look-up's
memory depends on the chunk size and the rows kept, not on the organisation.

It reads tolerantly: items that are not objects are kept (so a malformed listing still
fails validation, with a clear error), and a reply that is not an array at all is
decoded whole and handed on as it is.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any

__all__ = ["ListingReader"]

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class ListingReader:
    """Decodes a JSON array fed in chunks, keeping the items `keep` accepts.

    Args:
        keep: Says whether a row (a JSON object) is wanted.
    """

    def __init__(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        self._keep = keep
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._state = "start"  # then "items", "end"; or "document" for a non-array
        self._kept: list[Any] = []
        self._document: list[str] = []

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the reply.

        Raises:
            ValueError: The reply is not valid JSON (or not UTF-8).
        """
        self._take(self._text.decode(chunk), final=False)

    def result(self) -> Any:
        """The kept items once the reply is complete, or the whole reply if not an array.

        Raises:
            ValueError: The reply is not valid JSON, or ended early.
        """
        self._take(self._text.decode(b"", final=True), final=True)
        if self._state == "document":
            return json.loads("".join(self._document))
        if self._state != "end":
            raise ValueError("the listing ended before its closing bracket")
        return self._kept

    def _take(self, text: str, *, final: bool) -> None:
        if self._state == "document":
            self._document.append(text)
            return
        buffer, pos = self._buffer + text, 0
        while True:
            pos = _WHITESPACE.match(buffer, pos).end()  # type: ignore[union-attr]
            if pos >= len(buffer):
                break
            if self._state == "start":
                if buffer[pos] != "[":
                    self._state = "document"
                    self._document.append(buffer[pos:])
                    self._buffer = ""
                    return
                self._state, pos = "items", pos + 1
                continue
            if self._state == "end":
                raise ValueError("extra data after the listing")
            if buffer[pos] == "]":
                self._state, pos = "end", pos + 1
                continue
            if buffer[pos] == ",":
                pos += 1
                continue
            try:
                item, end = _DECODER.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                if final:
                    raise
                break  # an item cut at the chunk's end: wait for the rest of it
            if end == len(buffer) and not final and not isinstance(item, dict | list):
                break  # a number or a word at the end may go on in the next chunk
            pos = end
            if not isinstance(item, dict) or self._keep(item):
                self._kept.append(item)
        self._buffer = buffer[pos:]
