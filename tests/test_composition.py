"""Tests for prefect_atomscale._composition.parse_composition."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_atomscale._composition import ELEMENTS, MAX_FORMULA_LENGTH, parse_composition
from prefect_atomscale._exceptions import AtomscaleValidationError, InvalidCompositionError

# Parsing is microseconds per example; the limit keeps the whole file well under a
# second, and no deadline avoids flaky failures on a loaded CI machine.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

VALID = [
    ("BaTiO3", {"Ba": 1, "Ti": 1, "O": 3}),
    ("SrTiO3", {"Sr": 1, "Ti": 1, "O": 3}),
    ("LaAlO3", {"La": 1, "Al": 1, "O": 3}),
    ("GaN", {"Ga": 1, "N": 1}),
    ("Si", {"Si": 1}),
    ("Al2O3", {"Al": 2, "O": 3}),
    ("Al0.3Ga0.7As", {"Al": 0.3, "Ga": 0.7, "As": 1}),
    ("In0.53Ga0.47As", {"In": 0.53, "Ga": 0.47, "As": 1}),
    ("(La0.7Sr0.3)MnO3", {"La": 0.7, "Sr": 0.3, "Mn": 1, "O": 3}),
    ("SrTi0.8Nb0.2O3", {"Sr": 1, "Ti": 0.8, "Nb": 0.2, "O": 3}),
    ("Ca3(PO4)2", {"Ca": 3, "P": 2, "O": 8}),
    ("(Al0.2Ga0.8)2O3", {"Al": 0.4, "Ga": 1.6, "O": 3}),
    ("YBa2Cu3O7", {"Y": 1, "Ba": 2, "Cu": 3, "O": 7}),
    ("YBa2Cu3O6.5", {"Y": 1, "Ba": 2, "Cu": 3, "O": 6.5}),
    ("Bi2Sr2CaCu2O8", {"Bi": 2, "Sr": 2, "Ca": 1, "Cu": 2, "O": 8}),
    ("Pb(Zr0.52Ti0.48)O3", {"Pb": 1, "Zr": 0.52, "Ti": 0.48, "O": 3}),
    ("K(Ta0.5Nb0.5)O3", {"K": 1, "Ta": 0.5, "Nb": 0.5, "O": 3}),
    ("Hf0.5Zr0.5O2", {"Hf": 0.5, "Zr": 0.5, "O": 2}),
    ("SrRuO3", {"Sr": 1, "Ru": 1, "O": 3}),
    ("LiNbO3", {"Li": 1, "Nb": 1, "O": 3}),
    ("Fe3O4", {"Fe": 3, "O": 4}),
    ("MoS2", {"Mo": 1, "S": 2}),
    ("CsPbBr3", {"Cs": 1, "Pb": 1, "Br": 3}),
    ("Co", {"Co": 1}),
    ("CO", {"C": 1, "O": 1}),
    # A repeated element adds up; keys keep the order of first appearance.
    ("CH3COOH", {"C": 2, "H": 4, "O": 2}),
    ("OBaO2", {"O": 3, "Ba": 1}),
    # Whole results are ints, including from decimals: exact arithmetic, no 2.0999...
    ("(Al0.5Ga0.5)2", {"Al": 1, "Ga": 1}),
    ("(La0.7Sr0.3)3", {"La": 2.1, "Sr": 0.9}),
    ("O3.0", {"O": 3}),
    ("Ba1Ti1O3", {"Ba": 1, "Ti": 1, "O": 3}),
    # Square brackets group like round ones, and groups nest.
    ("[Al0.2Ga0.8]2O3", {"Al": 0.4, "Ga": 1.6, "O": 3}),
    ("((Ga)2N)3", {"Ga": 6, "N": 3}),
    ("[Ba(Ti0.9Zr0.1)O3]0.5", {"Ba": 0.5, "Ti": 0.45, "Zr": 0.05, "O": 1.5}),
    ("Ba(TiO3)", {"Ba": 1, "Ti": 1, "O": 3}),
    # Surrounding whitespace is ignored.
    ("  GaN\n", {"Ga": 1, "N": 1}),
]

CYRILLIC_O = "\N{CYRILLIC CAPITAL LETTER O}"

# (formula, substrings the message must contain, expected .position)
INVALID = [
    ("Xx2O3", ["unknown element 'Xx' at position 0", "periodic table"], 0),
    ("Ba2Qq", ["unknown element 'Qq' at position 3"], 3),
    ("DO2", ["unknown element 'D' at position 0", "'H'"], 0),
    ("bato3", ["lower-case 'b' at position 0", "capital letter", "'Ba'"], 0),
    ("Cuu", ["lower-case 'u' at position 2"], 2),
    ("(BaTiO3", ["'(' at position 0 is never closed", "add ')'"], 0),
    ("Ba(TiO3", ["'(' at position 2 is never closed"], 2),
    ("BaTiO3)", ["')' at position 6 has no matching opening bracket"], 6),
    ("(Ba]O", ["']' at position 3 does not match the '(' at position 0", "')'"], 3),
    ("", ["empty", "'BaTiO3'"], None),
    ("   ", ["empty"], None),
    ("2O3", ["count '2' at position 0 has nothing before it", "'Al2O3'"], 0),
    ("(2O)", ["count '2' at position 1 has nothing before it"], 1),
    ("()2", ["empty brackets '()' at position 0", "element symbols inside"], 0),
    ("Ba0TiO3", ["zero count '0' at position 2"], 2),
    ("Ti0.0O2", ["zero count '0.0' at position 2"], 2),
    ("(BaO)0", ["zero count '0' at position 5"], 5),
    ("Ba1.2.3", ["malformed number '1.2.3' at position 2", "'0.7'"], 2),
    ("Ti.5O2", ["malformed number '.5' at position 2"], 2),
    ("Ti1.O2", ["malformed number '1.' at position 2"], 2),
    ("Ba-TiO3", ["unexpected character '-' at position 2"], 2),
    ("BaTiO3!", ["unexpected character '!' at position 6"], 6),
    ("Ba TiO3", ["whitespace", "U+0020", "at position 2", "without spaces"], 2),
    ("Ba\tTiO3", ["whitespace", "U+0009", "at position 2"], 2),
    (f"BaTi{CYRILLIC_O}3", ["U+041E", "CYRILLIC CAPITAL LETTER O", "at position 4", "'O'"], 4),
    ("BaTiO\N{SUBSCRIPT THREE}", ["U+2083 SUBSCRIPT THREE", "at position 5", "'BaTiO3'"], 5),
    ("BaTiO\N{FULLWIDTH DIGIT THREE}", ["U+FF13", "at position 5", "'BaTiO3'"], 5),
    ("CuSO4\N{MIDDLE DOT}5H2O", ["U+00B7 MIDDLE DOT", "at position 5", "ASCII"], 5),
    # Positions count in the string as given, leading whitespace included.
    ("  Xx", ["unknown element 'Xx' at position 2"], 2),
]


@pytest.mark.parametrize(("formula", "expected"), VALID)
def test_valid_formulas(formula: str, expected: dict[str, int | float]) -> None:
    result = parse_composition(formula)
    assert result == expected
    assert list(result) == list(expected), "keys must keep the order of first appearance"
    assert {k: type(v) for k, v in result.items()} == {k: type(v) for k, v in expected.items()}


@pytest.mark.parametrize(("formula", "fragments", "position"), INVALID)
def test_invalid_formulas(formula: str, fragments: list[str], position: int | None) -> None:
    with pytest.raises(InvalidCompositionError) as info:
        parse_composition(formula)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert info.value.position == position
    assert info.value.formula == formula


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown element"):
        parse_composition("Xx")
    assert issubclass(InvalidCompositionError, AtomscaleValidationError)


def test_message_shows_a_caret_under_the_problem() -> None:
    with pytest.raises(InvalidCompositionError) as info:
        parse_composition("BaTiO3)")
    assert str(info.value).endswith("\n    BaTiO3)\n          ^")


@pytest.mark.parametrize("value", [None, 5, 3.0, b"BaTiO3", ["Ba", "Ti"]])
def test_non_string_input(value: object) -> None:
    with pytest.raises(InvalidCompositionError, match="as a string") as info:
        parse_composition(value)  # type: ignore[arg-type]
    assert type(value).__name__ in str(info.value)


def test_length_limit_is_inclusive() -> None:
    assert parse_composition("H" * MAX_FORMULA_LENGTH) == {"H": MAX_FORMULA_LENGTH}
    with pytest.raises(InvalidCompositionError, match=f"limit is {MAX_FORMULA_LENGTH}"):
        parse_composition("H" * (MAX_FORMULA_LENGTH + 1))


def test_very_long_input_is_rejected_without_echoing_it() -> None:
    formula = "BaTiO3" * 1700  # 10,200 characters
    with pytest.raises(InvalidCompositionError, match="10200 characters long") as info:
        parse_composition(formula)
    assert len(str(info.value)) < 300
    assert info.value.formula == formula


def test_deep_nesting() -> None:
    # As deep as the length limit allows; counts grow to exact big integers.
    assert parse_composition("(" * 127 + "H" + ")" * 127) == {"H": 1}
    assert parse_composition("(" * 85 + "H" + ")2" * 85) == {"H": 2**85}
    with pytest.raises(InvalidCompositionError, match="limit"):
        parse_composition("(" * 2000 + "H" + ")" * 2000)
    with pytest.raises(InvalidCompositionError, match="never closed"):
        parse_composition("(" * 200)


def test_elements() -> None:
    assert len(ELEMENTS) == 118
    assert {"H", "He", "C", "O", "Ti", "Sr", "Ba", "La", "Lu", "U", "Og"} <= ELEMENTS
    assert all(re.fullmatch("[A-Z][a-z]?", symbol) for symbol in ELEMENTS)
    assert not {"D", "T", "Uue", "J", "Q"} & ELEMENTS


# --- properties -------------------------------------------------------------------

# An amount is (digits, decimal places): 1234 with 2 places is 12.34.
amounts = st.tuples(st.integers(1, 10**6), st.integers(0, 4))
compositions = st.dictionaries(st.sampled_from(sorted(ELEMENTS)), amounts, min_size=1, max_size=8)


def exact(amount: tuple[int, int]) -> Fraction:
    digits, places = amount
    return Fraction(digits, 10**places)


def written(amount: tuple[int, int]) -> str:
    digits, places = amount
    if places == 0:
        return "" if digits == 1 else str(digits)
    whole, fraction = divmod(digits, 10**places)
    return f"{whole}.{fraction:0{places}d}"


def as_result(value: Fraction) -> int | float:
    return int(value) if value.denominator == 1 else float(value)


def formula_of(composition: dict[str, tuple[int, int]]) -> str:
    return "".join(symbol + written(amount) for symbol, amount in composition.items())


@PROPERTY_SETTINGS
@given(compositions)
def test_formatted_composition_parses_back(composition: dict[str, tuple[int, int]]) -> None:
    result = parse_composition(formula_of(composition))
    expected = {symbol: as_result(exact(amount)) for symbol, amount in composition.items()}
    assert result == expected
    assert list(result) == list(expected)
    assert {k: type(v) for k, v in result.items()} == {k: type(v) for k, v in expected.items()}


@PROPERTY_SETTINGS
@given(compositions, amounts, st.sampled_from([("(", ")"), ("[", "]")]))
def test_group_count_multiplies(
    composition: dict[str, tuple[int, int]], multiplier: tuple[int, int], brackets: tuple[str, str]
) -> None:
    opening, closing = brackets
    grouped = f"{opening}{formula_of(composition)}{closing}{written(multiplier)}"
    expected = {
        symbol: as_result(exact(amount) * exact(multiplier))
        for symbol, amount in composition.items()
    }
    assert parse_composition(grouped) == expected


@PROPERTY_SETTINGS
@given(compositions, compositions)
def test_repeated_elements_add_up(
    first: dict[str, tuple[int, int]], second: dict[str, tuple[int, int]]
) -> None:
    totals = {symbol: exact(amount) for symbol, amount in first.items()}
    for symbol, amount in second.items():
        totals[symbol] = totals.get(symbol, Fraction(0)) + exact(amount)
    result = parse_composition(formula_of(first) + formula_of(second))
    assert result == {symbol: as_result(total) for symbol, total in totals.items()}
    assert list(result) == list(totals)


# Characters a formula is made of, plus the mistakes people make with them.
FORMULA_ALPHABET = (
    "()[]0123456789.BaTiOCoXxbo -!\t" + CYRILLIC_O + "\N{SUBSCRIPT THREE}\N{FULLWIDTH DIGIT THREE}"
)


def check_only_composition_errors(text: str) -> None:
    try:
        result = parse_composition(text)
    except InvalidCompositionError as exc:
        assert exc.formula == text
        assert exc.position is None or 0 <= exc.position < len(text)
    else:
        assert result
        assert set(result) <= ELEMENTS
        assert all(value > 0 for value in result.values())


@PROPERTY_SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_composition_errors(text: str) -> None:
    check_only_composition_errors(text)


@PROPERTY_SETTINGS
@given(st.text(alphabet=FORMULA_ALPHABET, max_size=300))
def test_formula_like_text_raises_only_composition_errors(text: str) -> None:
    check_only_composition_errors(text)


@PROPERTY_SETTINGS
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_arbitrary_objects_raise_only_composition_errors(value: object) -> None:
    with pytest.raises(InvalidCompositionError):
        parse_composition(value)  # type: ignore[arg-type]
