"""`parse_composition`: the shared formula reader, raising this package's error type.

The grammar lives in `atomscale_chemistry.formula`, which the sandbox uses too; this
module only turns its `FormulaError` into `InvalidCompositionError`, so that a bad
formula is one of the integration's validation errors like any other bad input.
"""

from __future__ import annotations

from atomscale_chemistry.formula import ELEMENTS, MAX_FORMULA_LENGTH, FormulaError, parse_formula
from prefect_atomscale._exceptions import InvalidCompositionError

__all__ = ["ELEMENTS", "MAX_FORMULA_LENGTH", "parse_composition"]


def parse_composition(formula: str) -> dict[str, int | float]:
    """Parse a chemical formula into element counts, in order of first appearance.

    Accepted: element symbols (`H` to `Og`, case-sensitive) each followed by an
    optional count; counts are whole numbers or decimals with digits on both sides
    of the point (`2`, `0.7`, not `.7`); groups in round or square brackets, nested
    to any depth, each followed by an optional count that multiplies everything in
    it; a repeated element adds up (`CH3COOH` gives C 2, H 4, O 2). Whitespace
    around the formula is ignored; whitespace or any other character inside it is
    an error. Isotope symbols `D` and `T` are not accepted; write `H`.

    Arithmetic is exact, so `(La0.7Sr0.3)3` gives La 2.1, not 2.0999999999999996.
    A count whose exact value is whole comes back as `int` (`(Al0.5Ga0.5)2` gives
    Al 1, Ga 1), any other as the `float` nearest to the exact value.

    Args:
        formula: The formula, e.g. `"BaTiO3"` or `"(Al0.2Ga0.8)2O3"`, at most
            `MAX_FORMULA_LENGTH` (256) characters.

    Returns:
        Each element symbol mapped to its total count, keys in order of first
        appearance in the formula.

    Raises:
        InvalidCompositionError: If `formula` is not a string (then `.formula` holds
            its repr), is empty or too long, or cannot be read. The message names
            the problem, gives its character position in `formula` as given (also in
            `.position`) and says what to write instead.

    Example:
        ```python
        from prefect_atomscale import parse_composition

        print(parse_composition("(La0.7Sr0.3)MnO3"))
        # {'La': 0.7, 'Sr': 0.3, 'Mn': 1, 'O': 3}
        print(parse_composition("Ca3(PO4)2"))
        # {'Ca': 3, 'P': 2, 'O': 8}
        ```
    """
    try:
        return parse_formula(formula)
    except FormulaError as exc:
        raise InvalidCompositionError(
            str(exc), formula=exc.formula, position=exc.position
        ) from None
