"""Normalise crystal orientations written as Miller indices, e.g. `(1-10)` -> `1-10`.

Substrate and layer orientations reach the Atomscale API as bare Miller indices:
`001`, `1-10`, `0001`, `11-20`. People write them in many other ways (`(001)`,
`[1 -1 0]`, `(1,1,0)`, `(11̄0)`, `(1 1 -2 0)`); `normalize_orientation` accepts those
and returns the bare form, or raises an `InvalidOrientationError` that says what is
wrong and shows the accepted forms.

The rules are few and specific (three or four indices, the hexagonal constraint
i = -(h+k)), so a short hand-written scanner does the job better than a dependency.
"""

from __future__ import annotations

import functools
import re
import reprlib
import unicodedata

from prefect_atomscale._exceptions import InvalidOrientationError

__all__ = ["MAX_ORIENTATION_LENGTH", "normalize_orientation"]

MAX_ORIENTATION_LENGTH = 64
"""Longest orientation accepted, in characters, counting any surrounding whitespace."""

_ACCEPTED_FORMS = (
    "write 3 (hkl) or 4 (hkil) Miller indices, e.g. '001', '(1-10)', '[1 1 0]', "
    "'(1,-1,0)', '0001' or '(11-20)'"
)
# The bracket style says plane, direction or family; the API field does not keep it.
_BRACKETS = {
    "(": ")",
    "[": "]",
    "{": "}",
    "<": ">",
    "\N{MATHEMATICAL LEFT ANGLE BRACKET}": "\N{MATHEMATICAL RIGHT ANGLE BRACKET}",
}
# A bar over a digit is the typeset way to write a negative index.
_OVERBARS = "\N{COMBINING OVERLINE}\N{COMBINING MACRON}"
_DIGITS = "0123456789"
_SEPARATORS = re.compile(r"[\s,]+")
_SEPARATED_INDEX = re.compile(f"(-?)([0-9]+)([{_OVERBARS}]?)")


def normalize_orientation(orientation: str) -> str:
    """Return Miller indices in the bare form the API uses, e.g. `(1 -1 0)` -> `1-10`.

    Accepted input: three (hkl) or four (hkil, hexagonal) integer indices, optionally
    inside one pair of `()`, `[]`, `{}`, `<>` or `⟨⟩` (the bracket style is dropped:
    the API field holds only the indices). Indices are written either

    - compact, one digit each with `-` before or a bar over a negative one:
      `001`, `1-10`, `11̄0`, `11-20`; or
    - separated by spaces and/or commas, which also allows indices of 10 and more:
      `1 -1 0`, `(1,1,-2,0)`, `(1 0 12)`.

    The Unicode minus sign (U+2212) counts as `-`; whitespace around the indices and
    inside the brackets is ignored. Four indices must satisfy i = -(h+k), and the
    indices must not all be zero.

    Output: the indices concatenated with `-` for negatives (`1-10`, `11-20`). If an
    index is 10 or more in size, concatenation would be ambiguous (`1012` could be
    (1 0 1 2) or (1 0 12)), so the indices are joined with single spaces instead
    (`1 0 12`); that form is accepted as input too, so normalising is idempotent.

    Args:
        orientation: Miller indices as written by a person, at most
            `MAX_ORIENTATION_LENGTH` (64) characters.

    Returns:
        The bare indices, e.g. `"001"`, `"1-10"`, `"0001"` or `"11-20"`.

    Raises:
        InvalidOrientationError: If `orientation` is not a string (then
            `.orientation` holds its repr) or cannot be read as 3 or 4 Miller
            indices. The message says what is wrong and shows accepted forms.

    Example:
        ```python
        from prefect_atomscale import normalize_orientation

        print(normalize_orientation("(1 -1 0)"))  # 1-10
        print(normalize_orientation("[1,1,-2,0]"))  # 11-20
        print(normalize_orientation("(1 0 12)"))  # 1 0 12
        ```
    """
    if not isinstance(orientation, str):
        # reprlib keeps the message short whatever object was passed.
        shown = reprlib.repr(orientation)
        raise InvalidOrientationError(
            f"invalid orientation: expected Miller indices as a string such as '001', "
            f"got {type(orientation).__name__} {shown}",
            orientation=shown,
        )
    if len(orientation) > MAX_ORIENTATION_LENGTH:
        raise _error(
            orientation,
            f"it is {len(orientation)} characters long, the limit is {MAX_ORIENTATION_LENGTH}",
        )
    return _normalized(orientation)


# Each task run normalises its orientation twice (cache key, then body), and a campaign
# uses a handful of them: remember the recent ones (errors are raised, not remembered).
@functools.lru_cache(maxsize=256)
def _normalized(orientation: str) -> str:
    text = orientation.strip().replace("\N{MINUS SIGN}", "-")
    if not text:
        raise _error(orientation, "it is empty")
    body = _unwrap(orientation, text)
    _check_characters(orientation, body)
    separated = _SEPARATORS.search(body) is not None
    indices = _separated(orientation, body) if separated else _compact(orientation, body)
    _check(orientation, indices, separated=separated)
    if all(-9 <= index <= 9 for index in indices):
        return "".join(map(str, indices))
    return " ".join(map(str, indices))


def _unwrap(orientation: str, text: str) -> str:
    """Remove one pair of enclosing brackets, if any, and the whitespace inside them."""
    closer = _BRACKETS.get(text[0])
    if closer is not None:
        if len(text) < 2 or text[-1] != closer:
            raise _error(orientation, f"the opening {text[0]!r} is not closed with {closer!r}")
        body = text[1:-1].strip()
        if not body:
            raise _error(orientation, f"there are no indices inside {text!r}")
        return body
    if text[-1] in _BRACKETS.values():
        raise _error(orientation, f"the closing {text[-1]!r} has no opening bracket")
    return text


def _check_characters(orientation: str, body: str) -> None:
    """Reject any character that cannot be part of Miller indices, naming it exactly."""
    for char in body:
        if char in _DIGITS or char in "-," or char in _OVERBARS or char.isspace():
            continue
        name = unicodedata.name(char, "")
        problem = f"unexpected character {char!r} (U+{ord(char):04X}{' ' + name if name else ''})"
        if any(word in name for word in ("DASH", "HYPHEN", "MINUS")):
            problem += "; write a negative index with '-'"
        raise _error(orientation, problem)


def _compact(orientation: str, body: str) -> list[int]:
    """Read one-digit indices written without separators: `1-10`, `11̄0`."""
    indices: list[int] = []
    i = 0
    while i < len(body):
        negative = body[i] == "-"
        if negative:
            i += 1
        # Only digits, '-' and overbars are left after _check_characters.
        if i == len(body) or body[i] not in _DIGITS:
            if negative:
                raise _error(orientation, "each '-' must be directly followed by a digit")
            raise _error(orientation, "an overbar must directly follow a digit")
        value = int(body[i])
        i += 1
        if i < len(body) and body[i] in _OVERBARS:
            if negative:
                raise _error(orientation, "an index has both '-' and an overbar; use one")
            negative = True
            i += 1
        indices.append(-value if negative else value)
    return indices


def _separated(orientation: str, body: str) -> list[int]:
    """Read indices separated by whitespace and/or commas: `1 -1 0`, `1,0,12`."""
    indices: list[int] = []
    for token in _SEPARATORS.split(body):
        match = _SEPARATED_INDEX.fullmatch(token)
        if match is None:
            if not token:
                raise _error(orientation, "there is an empty index between separators")
            raise _error(
                orientation,
                f"{token!r} is not an integer index; with spaces or commas between "
                "indices, write each as a whole number with an optional leading '-', "
                "e.g. '1 -1 0'",
            )
        minus, digits, overbar = match.groups()
        if minus and overbar:
            raise _error(orientation, f"{token!r} has both '-' and an overbar; use one")
        indices.append(-int(digits) if minus or overbar else int(digits))
    return indices


def _check(orientation: str, indices: list[int], *, separated: bool) -> None:
    """Check the number of indices, that they are not all zero, and i = -(h+k)."""
    if len(indices) not in (3, 4):
        counted = "1 index" if len(indices) == 1 else f"{len(indices)} indices"
        problem = f"found {counted} ({', '.join(map(str, indices))}), not 3 or 4"
        if len(indices) > 4 and not separated:
            problem += (
                "; without separators every index is one digit, so write an index "
                "of 10 or more with spaces, e.g. '(1 0 12)'"
            )
        raise _error(orientation, problem)
    if not any(indices):
        raise _error(orientation, "all indices are zero, which names no plane or direction")
    if len(indices) == 4:
        h, k, i, _ = indices
        if i != -(h + k):
            raise _error(
                orientation,
                f"in four-index (hkil) notation the third index must be i = -(h+k); "
                f"here h={h} and k={k}, so i must be {-(h + k)}, not {i}",
            )


def _error(orientation: str, problem: str) -> InvalidOrientationError:
    """Build the error: what is wrong with `orientation`, then the accepted forms."""
    # An overlong input is cut short so that it cannot swamp the message.
    if len(orientation) > MAX_ORIENTATION_LENGTH:
        shown = f"{orientation[:20]!r}..."
    else:
        shown = repr(orientation)
    return InvalidOrientationError(
        f"invalid orientation {shown}: {problem}; {_ACCEPTED_FORMS}",
        orientation=orientation,
    )
