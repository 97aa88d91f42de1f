"""Ready-made flows: create the target materials that stack files describe.

- `stack_from_file(path, credentials)` creates the stack of one file, unless it
  was created already;
- `stacks_from_folder(folder, credentials)` does so for every stack file in a
  folder: the flow to deploy on a schedule (the repository's `prefect.yaml` deploys it
  as `prefect_atomscale.flows.stacks_from_folder`);
- `growth_run_from_file(path, credentials, run_name)` creates the file's target material
  and the growth run (physical sample) that grows it, linked: the name the instrument's
  data is then uploaded to with the official `atomscale` SDK.

The modules, by concern: `_stack_from_file`, `_stacks_from_folder` and
`_growth_run_flow` are the flows' stories alone; `_outcomes` what they return;
`_run_names` what their runs are called; `_layer_log` and `_stack_failures` what a run
logs and reports; `_block_parameter` and `_parent_listing` the plumbing. Their
artifacts are in `prefect_atomscale._artifacts`, beside the stack artifacts.

The stack-file flows are built on the package's own tasks, `create_target_material` and
`create_layers`, and decide what exists from the account itself, with one listing per
run. `credentials` is an `AtomscaleCredentials` block, so a deployment's run form
offers a block picker. A stack file is YAML, JSON or CSV; see `load_stack_file`.

`credentials_block_reference(block_name)` is a `prefect.yaml` build step: it gives a
deployment its saved block by id, the form the run form's picker shows selected.
`is_made_up_run_name(name)` tells a run name Prefect or its UI made up from one a
person typed, for a flow that names its runs (as `flows/stack_report.py` does).
"""

from prefect_atomscale.flows._deploy_steps import credentials_block_reference
from prefect_atomscale.flows._growth_run_flow import GrowthRunOutcome, growth_run_from_file
from prefect_atomscale.flows._outcomes import StackFolderError, StackOutcome
from prefect_atomscale.flows._run_names import is_made_up_run_name
from prefect_atomscale.flows._stack_from_file import stack_from_file
from prefect_atomscale.flows._stacks_from_folder import stacks_from_folder

__all__ = [
    "GrowthRunOutcome",
    "StackFolderError",
    "StackOutcome",
    "credentials_block_reference",
    "growth_run_from_file",
    "is_made_up_run_name",
    "stack_from_file",
    "stacks_from_folder",
]
