"""Tests for prefect_atomscale._orientation.normalize_orientation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_atomscale._exceptions import InvalidOrientationError
from prefect_atomscale._orientation import MAX_ORIENTATION_LENGTH, normalize_orientation

# Normalising is microseconds per example; no deadline avoids flaky CI failures.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

BAR = "\N{COMBINING MACRON}"
OVERLINE = "\N{COMBINING OVERLINE}"
MINUS_SIGN = "\N{MINUS SIGN}"

ACCEPTED = [
    ("001", "001"),
    ("(001)", "001"),
    ("[110]", "110"),
    ("{100}", "100"),
    ("<111>", "111"),
    ("\N{MATHEMATICAL LEFT ANGLE BRACKET}111\N{MATHEMATICAL RIGHT ANGLE BRACKET}", "111"),
    ("1-10", "1-10"),
    ("(1-10)", "1-10"),
    ("(1 -1 0)", "1-10"),
    ("1 1 0", "110"),
    ("(1,1,0)", "110"),
    ("(1, -1, 0)", "1-10"),
    ("[ 1 , 1 , 0 ]", "110"),
    (f"(11{BAR}0)", "1-10"),
    (f"(11{OVERLINE}0)", "1-10"),
    (f"(1 1{BAR} 0)", "1-10"),
    (f"1{MINUS_SIGN}10", "1-10"),
    ("-1-1-1", "-1-1-1"),
    ("  (001)\n", "001"),
    ("( 0 0 1 )", "001"),
    ("0001", "0001"),
    ("(0001)", "0001"),
    ("11-20", "11-20"),
    ("(11-20)", "11-20"),
    ("(10-10)", "10-10"),
    ("(1 1 -2 0)", "11-20"),
    ("[2,-1,-1,0]", "2-1-10"),
    (f"(2{BAR}110)", "-2110"),
    # Indices of 10 and more need separators, and keep them in the output.
    ("(1 0 12)", "1 0 12"),
    ("1 0 12", "1 0 12"),
    ("(10, -5, -5, 3)", "10 -5 -5 3"),
]

# (orientation, substrings the message must contain)
REJECTED = [
    ("abc", ["unexpected character 'a'", "U+0061"]),
    ("0 0 1 1 1", ["found 5 indices (0, 0, 1, 1, 1), not 3 or 4"]),
    ("11111", ["found 5 indices", "'(1 0 12)'"]),
    ("", ["empty"]),
    ("   ", ["empty"]),
    ("01", ["found 2 indices (0, 1)"]),
    ("(5)", ["found 1 index (5)"]),
    ("(001", ["opening '(' is not closed with ')'"]),
    ("(001]", ["opening '(' is not closed with ')'"]),
    ("001)", ["closing ')' has no opening bracket"]),
    ("((001))", ["unexpected character '('"]),
    ("()", ["no indices inside '()'"]),
    ("1--10", ["each '-' must be directly followed by a digit"]),
    ("110-", ["each '-' must be directly followed by a digit"]),
    (f"{BAR}110", ["an overbar must directly follow a digit"]),
    (f"-1{BAR}10", ["both '-' and an overbar"]),
    (f"-1{BAR} 1 0", ["both '-' and an overbar"]),
    ("000", ["all indices are zero"]),
    ("(0 0 0 0)", ["all indices are zero"]),
    ("1120", ["i = -(h+k)", "h=1 and k=1", "i must be -2, not 2"]),
    ("(1 1 2 0)", ["i must be -2, not 2"]),
    ("1 1-1 0", ["'1-1' is not an integer index"]),
    ("1,1,0,", ["empty index between separators"]),
    ("1\N{EN DASH}10", ["U+2013 EN DASH", "write a negative index with '-'"]),
    ("1\N{FULLWIDTH DIGIT ONE}0", ["U+FF11"]),
    ("(1+1 0)", ["unexpected character '+'"]),
]


@pytest.mark.parametrize(("orientation", "expected"), ACCEPTED)
def test_accepted_forms(orientation: str, expected: str) -> None:
    assert normalize_orientation(orientation) == expected
    assert normalize_orientation(expected) == expected


@pytest.mark.parametrize(("orientation", "fragments"), REJECTED)
def test_rejected_forms(orientation: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidOrientationError) as info:
        normalize_orientation(orientation)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert "e.g. '001', '(1-10)'" in message, "every message shows the accepted forms"
    assert info.value.orientation == orientation


@pytest.mark.parametrize("value", [None, 1, 1.0, (0, 0, 1), b"001"])
def test_non_string_input(value: object) -> None:
    with pytest.raises(InvalidOrientationError, match="as a string") as info:
        normalize_orientation(value)  # type: ignore[arg-type]
    assert type(value).__name__ in str(info.value)


def test_overlong_input_is_rejected_without_echoing_it() -> None:
    orientation = "1" * 10_000
    with pytest.raises(InvalidOrientationError, match=f"limit is {MAX_ORIENTATION_LENGTH}") as info:
        normalize_orientation(orientation)
    assert len(str(info.value)) < 300


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid orientation"):
        normalize_orientation("abc")


# --- properties -------------------------------------------------------------------

small = st.integers(-15, 15)
three_index = st.tuples(small, small, small).filter(any)
four_index = st.builds(lambda h, k, last: (h, k, -(h + k), last), small, small, small).filter(any)


def styles(indices: tuple[int, ...]) -> list[str]:
    """Ways people write `indices`; the compact ones only if every index is one digit."""
    spaced = " ".join(map(str, indices))
    written = [
        spaced,
        f"({spaced})",
        f"[{spaced}]",
        ",".join(map(str, indices)),
        f"({', '.join(map(str, indices))})",
        f"< {spaced} >",
        spaced.replace("-", MINUS_SIGN),
    ]
    if all(-9 <= index <= 9 for index in indices):
        compact = "".join(map(str, indices))
        barred = "".join(f"{-i}{BAR}" if i < 0 else str(i) for i in indices)
        written += [compact, f"({compact})", f"{{{compact}}}", barred, f"({barred})"]
    return written


def bare(indices: tuple[int, ...]) -> str:
    separator = "" if all(-9 <= index <= 9 for index in indices) else " "
    return separator.join(map(str, indices))


@PROPERTY_SETTINGS
@given(st.one_of(three_index, four_index))
def test_every_style_normalises_to_the_bare_form(indices: tuple[int, ...]) -> None:
    expected = bare(indices)
    for orientation in styles(indices):
        assert normalize_orientation(orientation) == expected, orientation
    assert normalize_orientation(expected) == expected


@PROPERTY_SETTINGS
@given(st.tuples(small, small, small, small).filter(lambda t: t[2] != -(t[0] + t[1])))
def test_inconsistent_four_index_forms_are_rejected(indices: tuple[int, ...]) -> None:
    for orientation in styles(indices):
        with pytest.raises(InvalidOrientationError, match=r"i = -\(h\+k\)"):
            normalize_orientation(orientation)


ORIENTATION_ALPHABET = "0123456789-, ()[]{}<>abc\t" + BAR + MINUS_SIGN + "\N{EN DASH}"


def check_only_orientation_errors(text: str) -> None:
    try:
        result = normalize_orientation(text)
    except InvalidOrientationError as exc:
        assert exc.orientation == text
    else:
        assert normalize_orientation(result) == result


@PROPERTY_SETTINGS
@given(st.text(max_size=100))
def test_arbitrary_text_raises_only_orientation_errors(text: str) -> None:
    check_only_orientation_errors(text)


@PROPERTY_SETTINGS
@given(st.text(alphabet=ORIENTATION_ALPHABET, max_size=30))
def test_orientation_like_text_raises_only_orientation_errors(text: str) -> None:
    check_only_orientation_errors(text)
