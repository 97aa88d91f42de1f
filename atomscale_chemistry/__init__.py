"""Chemistry shared by the integration and the sandbox: reading chemical formulas.

Pure Python with no dependencies, so that `atomscale_sandbox` can use it without
importing Prefect or the integration's client side.

Example:
    ```python
    from atomscale_chemistry import parse_formula

    print(parse_formula("BaTiO3"))  # {'Ba': 1, 'Ti': 1, 'O': 3}
    ```
"""

from atomscale_chemistry.formula import ELEMENTS, MAX_FORMULA_LENGTH, FormulaError, parse_formula

__all__ = ["ELEMENTS", "MAX_FORMULA_LENGTH", "FormulaError", "parse_formula"]
