"""Parse chemical formulas such as `(La0.7Sr0.3)MnO3` into element counts.

Atomscale target materials and layers carry a composition. Users type it as a
formula; the API wants element counts. `parse_formula` turns one into the other
and rejects anything it cannot read with a `FormulaError` that says what
is wrong, at which character, and what to write instead.

The parser is hand-written: a single left-to-right scan with an explicit stack of
open brackets. Nothing small and well kept does this job (pymatgen's `Composition`
would pull in a whole materials-science stack for one function), and an explicit
stack instead of recursion means no input can raise `RecursionError`. Input is
capped at `MAX_FORMULA_LENGTH` characters before any parsing, so the work is linear
and small whatever is passed in.

This module is pure (no I/O, no Prefect or HTTP imports) and lives outside both
packages because the integration (`prefect_atomscale`) and the sandbox server
(`atomscale_sandbox`) read formulas with the same function, and the sandbox imports
nothing from the integration.
"""

from __future__ import annotations

import functools
import re
import reprlib
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction


class FormulaError(ValueError):
    """A chemical formula that cannot be parsed; the message names the problem and where.

    Attributes:
        formula: The formula as given.
        position: Index of the offending character in `formula`, if there is one.

    Example:
        ```python
        from atomscale_chemistry import FormulaError, parse_formula

        try:
            parse_formula("BaTiO3 SrTiO3")
        except FormulaError as exc:
            print(exc.position)  # 6
        ```
    """

    def __init__(self, message: str, *, formula: str, position: int | None = None):
        super().__init__(message)
        self.formula = formula
        self.position = position


__all__ = ["ELEMENTS", "MAX_FORMULA_LENGTH", "FormulaError", "parse_formula"]

# Laid out as the periodic table so that a reader can check it at a glance.
ELEMENTS: frozenset[str] = frozenset(
    """
    H                                                  He
    Li Be                               B  C  N  O  F  Ne
    Na Mg                               Al Si P  S  Cl Ar
    K  Ca Sc Ti V  Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr
    Rb Sr Y  Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I  Xe
    Cs Ba    Hf Ta W  Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn
    Fr Ra    Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og
          La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu
          Ac Th Pa U  Np Pu Am Cm Bk Cf Es Fm Md No Lr
    """.split()  # noqa: SIM905
)
"""The 118 element symbols, hydrogen (`H`) to oganesson (`Og`), case-sensitive.

Example:
    ```python
    from atomscale_chemistry import ELEMENTS

    print(len(ELEMENTS), "Ga" in ELEMENTS, "GA" in ELEMENTS)  # 118 True False
    ```
"""

MAX_FORMULA_LENGTH = 256
"""Longest formula accepted, in characters, counting any surrounding whitespace.

Example:
    ```python
    from atomscale_chemistry import MAX_FORMULA_LENGTH, FormulaError, parse_formula

    try:
        parse_formula("SrTiO3" * 50)
    except FormulaError as exc:
        print(len(exc.formula) > MAX_FORMULA_LENGTH)  # True
    ```
"""

# A count is digits with at most one decimal point and digits on both sides of it.
# Candidates are collected greedily from [0-9.] first, so `1.2.3` and `.5` are
# reported as one malformed number instead of a confusing "stray '.'".
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NUMBER_CHARS = frozenset("0123456789.")
_CLOSER = {"(": ")", "[": "]"}

# Letters that render like ASCII ones but are not, as pasted from word processors
# or non-Latin keyboards. NFKC already maps subscripts, superscripts and fullwidth
# forms to ASCII; it leaves Cyrillic and Greek letters alone, hence this table.
_LOOKALIKES = {
    "\N{CYRILLIC CAPITAL LETTER A}": "A",
    "\N{CYRILLIC CAPITAL LETTER VE}": "B",
    "\N{CYRILLIC CAPITAL LETTER ES}": "C",
    "\N{CYRILLIC CAPITAL LETTER IE}": "E",
    "\N{CYRILLIC CAPITAL LETTER EN}": "H",
    "\N{CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I}": "I",
    "\N{CYRILLIC CAPITAL LETTER JE}": "J",
    "\N{CYRILLIC CAPITAL LETTER KA}": "K",
    "\N{CYRILLIC CAPITAL LETTER EM}": "M",
    "\N{CYRILLIC CAPITAL LETTER O}": "O",
    "\N{CYRILLIC CAPITAL LETTER ER}": "P",
    "\N{CYRILLIC CAPITAL LETTER DZE}": "S",
    "\N{CYRILLIC CAPITAL LETTER TE}": "T",
    "\N{CYRILLIC CAPITAL LETTER HA}": "X",
    "\N{CYRILLIC CAPITAL LETTER U}": "Y",
    "\N{CYRILLIC SMALL LETTER A}": "a",
    "\N{CYRILLIC SMALL LETTER ES}": "c",
    "\N{CYRILLIC SMALL LETTER IE}": "e",
    "\N{CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I}": "i",
    "\N{CYRILLIC SMALL LETTER JE}": "j",
    "\N{CYRILLIC SMALL LETTER O}": "o",
    "\N{CYRILLIC SMALL LETTER ER}": "p",
    "\N{CYRILLIC SMALL LETTER DZE}": "s",
    "\N{CYRILLIC SMALL LETTER HA}": "x",
    "\N{CYRILLIC SMALL LETTER U}": "y",
    "\N{GREEK CAPITAL LETTER ALPHA}": "A",
    "\N{GREEK CAPITAL LETTER BETA}": "B",
    "\N{GREEK CAPITAL LETTER EPSILON}": "E",
    "\N{GREEK CAPITAL LETTER ZETA}": "Z",
    "\N{GREEK CAPITAL LETTER ETA}": "H",
    "\N{GREEK CAPITAL LETTER IOTA}": "I",
    "\N{GREEK CAPITAL LETTER KAPPA}": "K",
    "\N{GREEK CAPITAL LETTER MU}": "M",
    "\N{GREEK CAPITAL LETTER NU}": "N",
    "\N{GREEK CAPITAL LETTER OMICRON}": "O",
    "\N{GREEK CAPITAL LETTER RHO}": "P",
    "\N{GREEK CAPITAL LETTER TAU}": "T",
    "\N{GREEK CAPITAL LETTER UPSILON}": "Y",
    "\N{GREEK CAPITAL LETTER CHI}": "X",
    "\N{GREEK SMALL LETTER OMICRON}": "o",
}


@dataclass
class _Group:
    """Counts collected so far inside one bracket level (the whole formula is level 0)."""

    opened_at: int
    closer: str
    counts: dict[str, Fraction] = field(default_factory=dict)

    def add(self, symbol: str, count: Fraction) -> None:
        # dicts keep insertion order, which gives "first appearance" key order.
        self.counts[symbol] = self.counts.get(symbol, Fraction(0)) + count


def parse_formula(formula: str) -> dict[str, int | float]:
    """Parse a chemical formula into element counts, in order of first appearance.

    Accepted: element symbols (`H` to `Og`, case-sensitive) each followed by an
    optional count; counts are whole numbers or decimals with digits on both sides
    of the point (`2`, `0.7`, not `.7`); groups in round or square brackets, nested
    to any depth, each followed by an optional count that multiplies everything in
    it; a repeated element adds up (`CH3COOH` gives C 2, H 4, O 2). Whitespace
    around the formula is ignored; whitespace or any other character inside it is
    an error. Isotope symbols `D` and `T` are not accepted; write `H`.

    Arithmetic is exact (`fractions.Fraction`), so `(La0.7Sr0.3)3` gives La 2.1,
    not 2.0999999999999996. A count whose exact value is whole comes back as `int`
    (`(Al0.5Ga0.5)2` gives Al 1, Ga 1; `O3.0` gives O 3), any other as the `float`
    nearest to the exact value.

    Args:
        formula: The formula, e.g. `"BaTiO3"` or `"(Al0.2Ga0.8)2O3"`, at most
            `MAX_FORMULA_LENGTH` (256) characters.

    Returns:
        Each element symbol mapped to its total count, keys in order of first
        appearance in the formula.

    Raises:
        FormulaError: If `formula` is not a string (then `.formula` holds
            its repr), is empty or too long, or cannot be read. The message names
            the problem, gives its character position in `formula` as given (also in
            `.position`) and says what to write instead.

    Example:
        ```python
        from atomscale_chemistry import parse_formula

        print(parse_formula("(La0.7Sr0.3)MnO3"))  # {'La': 0.7, 'Sr': 0.3, 'Mn': 1, 'O': 3}
        print(parse_formula("Ca3(PO4)2"))  # {'Ca': 3, 'P': 2, 'O': 8}
        ```
    """
    if not isinstance(formula, str):
        # reprlib keeps the message short whatever object was passed.
        shown = reprlib.repr(formula)
        raise FormulaError(
            f"invalid composition: expected the formula as a string such as 'BaTiO3', "
            f"got {type(formula).__name__} {shown}",
            formula=shown,
        )
    if len(formula) > MAX_FORMULA_LENGTH:
        # Checked first, on the string as given, so a huge input costs O(1) and its
        # text is not copied into the message.
        raise FormulaError(
            f"invalid composition {formula[:30]!r}...: the formula is {len(formula)} "
            f"characters long, the limit is {MAX_FORMULA_LENGTH}; pass a single "
            "formula such as 'BaTiO3'",
            formula=formula,
        )
    start = len(formula) - len(formula.lstrip())
    end = len(formula.rstrip())
    if start >= end:
        raise FormulaError(
            f"invalid composition {formula!r}: the formula is empty; "
            "give one such as 'BaTiO3' or '(La0.7Sr0.3)MnO3'",
            formula=formula,
        )
    return dict(_parse_stripped(formula, start, end))


# A campaign sends the same few formulas over and over, and each task run parses its
# formula twice (cache key, then body): remember the recent ones. Callers get a copy,
# so the remembered dict is never changed; errors are raised again, not remembered.
@functools.lru_cache(maxsize=1024)
def _parse_stripped(formula: str, start: int, end: int) -> dict[str, int | float]:
    return _parse(formula, start, end)


def _parse(formula: str, start: int, end: int) -> dict[str, int | float]:
    """Scan `formula[start:end]` once, keeping a stack of the brackets still open."""
    stack = [_Group(opened_at=start, closer="")]
    i = start
    while i < end:
        char = formula[i]
        if "A" <= char <= "Z":
            j = i + 1
            if j < end and "a" <= formula[j] <= "z":
                j += 1
            symbol = formula[i:j]
            if symbol not in ELEMENTS:
                raise _unknown_element(formula, i, symbol)
            count, i = _read_count(formula, j, end)
            stack[-1].add(symbol, count)
        elif char in _CLOSER:
            stack.append(_Group(opened_at=i, closer=_CLOSER[char]))
            i += 1
        elif char in ")]":
            group = stack.pop()
            if not stack:
                raise _error(
                    formula,
                    i,
                    f"{char!r} at position {i} has no matching opening bracket",
                    "remove it or add the opening bracket where the group starts, "
                    "e.g. '(La0.7Sr0.3)MnO3'",
                )
            if char != group.closer:
                raise _error(
                    formula,
                    i,
                    f"{char!r} at position {i} does not match the "
                    f"{formula[group.opened_at]!r} at position {group.opened_at}",
                    f"close the group with {group.closer!r}",
                )
            if not group.counts:
                raise _error(
                    formula,
                    group.opened_at,
                    f"empty brackets {formula[group.opened_at : i + 1]!r} "
                    f"at position {group.opened_at}",
                    "put element symbols inside, e.g. '(PO4)2'",
                )
            multiplier, i = _read_count(formula, i + 1, end)
            for symbol, count in group.counts.items():
                stack[-1].add(symbol, count * multiplier)
        elif char in _NUMBER_CHARS:
            number = _number_at(formula, i, end)
            raise _error(
                formula,
                i,
                f"count {number!r} at position {i} has nothing before it",
                "a count follows an element symbol or a closing bracket, e.g. 'Al2O3' or '(PO4)2'",
            )
        elif "a" <= char <= "z":
            raise _error(
                formula,
                i,
                f"lower-case {char!r} at position {i} where an element symbol should start",
                _case_hint(formula[i : i + 2]),
            )
        elif char.isspace():
            raise _error(
                formula,
                i,
                f"whitespace {_describe(char)} at position {i} inside the formula",
                "write the formula without spaces, e.g. 'BaTiO3'",
            )
        elif not char.isascii():
            raise _non_ascii(formula, i, start, end)
        else:
            raise _error(
                formula,
                i,
                f"unexpected character {char!r} at position {i}",
                "a formula contains only element symbols, counts and brackets "
                "'()' or '[]', e.g. 'Pb(Zr0.52Ti0.48)O3'",
            )
    if len(stack) > 1:
        group = stack[-1]
        raise _error(
            formula,
            group.opened_at,
            f"{formula[group.opened_at]!r} at position {group.opened_at} is never closed",
            f"add {group.closer!r} where the group ends, e.g. '(La0.7Sr0.3)MnO3'",
        )
    # Counts are positive multiples of powers of ten, and the length cap keeps them
    # below 10**256, so float() cannot overflow here.
    return {
        symbol: int(count) if count.denominator == 1 else float(count)
        for symbol, count in stack[0].counts.items()
    }


def _read_count(formula: str, i: int, end: int) -> tuple[Fraction, int]:
    """Read the optional count at `i`; return it (1 if absent) and the index after it."""
    number = _number_at(formula, i, end)
    if not number:
        return Fraction(1), i
    if not _NUMBER.fullmatch(number):
        raise _error(
            formula,
            i,
            f"malformed number {number!r} at position {i}",
            "write counts as digits with at most one decimal point and a digit on each "
            "side of it, e.g. '3' or '0.7'",
        )
    count = Fraction(number)
    if count == 0:
        raise _error(
            formula,
            i,
            f"zero count {number!r} at position {i}",
            "leave the element out instead, or give its real amount",
        )
    return count, i + len(number)


def _number_at(formula: str, i: int, end: int) -> str:
    """Return the run of digits and points starting at `i` (possibly empty)."""
    j = i
    while j < end and formula[j] in _NUMBER_CHARS:
        j += 1
    return formula[i:j]


def _unknown_element(formula: str, i: int, symbol: str) -> FormulaError:
    """Build the error for a capitalised symbol that is not in the periodic table."""
    if symbol in ("D", "T"):
        hint = "isotopes are not distinguished; write hydrogen as 'H'"
    else:
        hint = (
            "use a symbol from the periodic table ('H' to 'Og'); symbols are "
            "case-sensitive: 'Co' is cobalt, 'CO' is carbon and oxygen"
        )
    return _error(formula, i, f"unknown element {symbol!r} at position {i}", hint)


def _case_hint(letters: str) -> str:
    """Suggest the capitalised symbol the user probably meant by `letters`."""
    for candidate in (letters.capitalize(), letters[0].upper()):
        if candidate in ELEMENTS:
            return f"element symbols start with a capital letter: write {candidate!r}"
    return "element symbols start with a capital letter, e.g. 'Ba' or 'O'"


def _non_ascii(formula: str, i: int, start: int, end: int) -> FormulaError:
    """Build the error for a non-ASCII character, naming it and what it imitates."""
    char = formula[i]
    lookalike = _ascii_lookalike(char)
    if lookalike is None:
        return _error(
            formula,
            i,
            f"non-ASCII character {_describe(char)} at position {i}",
            "formulas use only ASCII letters, digits and brackets, e.g. 'BaTiO3'",
        )
    fixed = "".join(_ascii_lookalike(c) or c for c in formula[start:end])
    suggestion = f"; did you mean {fixed!r}?" if fixed.isascii() else ""
    return _error(
        formula,
        i,
        f"non-ASCII character {_describe(char)} at position {i}, which looks like {lookalike!r}",
        f"retype the formula in plain ASCII{suggestion}",
    )


def _ascii_lookalike(char: str) -> str | None:
    """Return the ASCII character `char` imitates (`₃` -> `3`, U+041E Cyrillic O -> `O`)."""
    candidate = _LOOKALIKES.get(char) or unicodedata.normalize("NFKC", char)
    if len(candidate) == 1 and candidate != char and candidate.isascii():
        return candidate
    return None


def _describe(char: str) -> str:
    """Name a character unambiguously, e.g. `'₃' (U+2083 SUBSCRIPT THREE)`."""
    name = unicodedata.name(char, "")
    return f"{char!r} (U+{ord(char):04X}{' ' + name if name else ''})"


def _error(formula: str, position: int, problem: str, hint: str) -> FormulaError:
    """Build the error: the problem (which names `position`), a caret under it, the fix."""
    message = f"invalid composition {formula!r}: {problem}; {hint}"
    # The caret only lines up under the culprit if every character takes one column.
    if formula.isprintable() and all(map(_one_column, formula)):
        message += f"\n    {formula}\n    {' ' * position}^"
    return FormulaError(message, formula=formula, position=position)


def _one_column(char: str) -> bool:
    """Whether a terminal draws `char` one column wide (not wide, not combining)."""
    return unicodedata.east_asian_width(char) not in ("W", "F") and not unicodedata.combining(char)
