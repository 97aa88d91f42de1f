"""What the package's runs show in the Prefect UI's Artifacts tab, all in one place.

- `_stack`: the table of a stack's layers and its picture (`publish_stack_artifacts`,
  public, and `publish_unwritten_stack` for a stack whose target material was not
  created), with a status and a reason per layer for a stack not finished;
- `_folder`: a folder run's table, one row per stack file with its run, target
  material, status and reason (`publish_folder_summary`);
- `_invalid_file`: the problems of a stack file that cannot be used, which has no
  stack to draw (`publish_invalid_file`).
"""

from prefect_atomscale._artifacts._folder import FolderRow, folder_key, publish_folder_summary
from prefect_atomscale._artifacts._invalid_file import publish_invalid_file
from prefect_atomscale._artifacts._stack import (
    IN_PLACE,
    LAYER_STATUSES,
    StackArtifacts,
    apublish_stack_artifacts,
    artifact_key,
    collapse_repeats,
    describe_stack,
    distinct_fills,
    plural,
    publish_stack_artifacts,
    publish_unwritten_stack,
    stack_markdown,
    stack_svg,
    stack_table,
    table_cell,
)

__all__ = [
    "IN_PLACE",
    "LAYER_STATUSES",
    "FolderRow",
    "StackArtifacts",
    "apublish_stack_artifacts",
    "artifact_key",
    "collapse_repeats",
    "describe_stack",
    "distinct_fills",
    "folder_key",
    "plural",
    "publish_folder_summary",
    "publish_invalid_file",
    "publish_stack_artifacts",
    "publish_unwritten_stack",
    "stack_markdown",
    "stack_svg",
    "stack_table",
    "table_cell",
]
