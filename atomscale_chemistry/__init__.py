"""Chemistry shared by the integration and the sandbox: reading chemical formulas.

Pure Python with no dependencies, so that `atomscale_sandbox` can use it without
importing Prefect or the integration's client side.
"""

from atomscale_chemistry.formula import ELEMENTS, MAX_FORMULA_LENGTH, FormulaError, parse_formula

__all__ = ["ELEMENTS", "MAX_FORMULA_LENGTH", "FormulaError", "parse_formula"]
