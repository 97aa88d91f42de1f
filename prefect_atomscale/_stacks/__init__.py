"""Stack files: a target material and its layers written down in YAML, JSON or CSV.

Labs keep a description of each target material next to its growth recipe. This package
reads those files, checks them completely before anything is sent, and compares them
with what an Atomscale account already holds (drawing a stack for the Prefect UI is in
`prefect_atomscale._artifacts`):

- `_spec`: `StackSpec`, `LayerSpec` and `RepeatBlock`, the pydantic models of a file. A
  `RepeatBlock` (`{"repeat": 20, "layers": [...]}`) is a superlattice; it expands to
  consecutive positions. Formulas, Miller indices, space groups, Materials Project ids
  and element amounts are checked with the same rules the tasks apply, so a file that
  loads is a file whose requests will not be refused for their form.
- `_formats`: `load_stack_file` reads `.yaml`/`.yml`, `.json` and `.csv` (flat stacks
  only) and raises `InvalidStackFileError` for every problem at once;
- `_locations`: where each problem is (the layer, its period in a repeat block, the
  field, the line), for that error's message;
- `_compare`: `compare_with_existing` tells whether a stack was already created, from
  the rows of `GET /target-materials/`: absent, complete, partly there, or in conflict.
  It matches layers with the tasks' own rule, `_reconcile.decide_layer`.

Layer 1 is the first layer grown, on the substrate.
"""

from prefect_atomscale._exceptions import (
    InvalidStackFileError,
    StackConflictError,
    StackFileProblem,
)
from prefect_atomscale._stacks._compare import ExistingStack, compare_with_existing
from prefect_atomscale._stacks._formats import STACK_FILE_SUFFIXES, load_stack_file, parse_stack
from prefect_atomscale._stacks._spec import (
    MAX_REPEAT,
    LayerSpec,
    RepeatBlock,
    StackLayer,
    StackSpec,
)

__all__ = [
    "MAX_REPEAT",
    "STACK_FILE_SUFFIXES",
    "ExistingStack",
    "InvalidStackFileError",
    "LayerSpec",
    "RepeatBlock",
    "StackConflictError",
    "StackFileProblem",
    "StackLayer",
    "StackSpec",
    "compare_with_existing",
    "load_stack_file",
    "parse_stack",
]
