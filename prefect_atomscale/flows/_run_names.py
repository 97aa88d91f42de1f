"""What the flows' runs are called and tagged: the names people look at in the runs list.

A run's name is made up by Prefect (or its UI's run form) unless a person typed one;
only made-up names are replaced (`is_made_up_run_name`, public, for flows outside the
package that name their runs too). A `stack-from-file` run is named after its file
(`stack_run_name`), a `stacks-from-folder` run after its folder (`folder_run_name`), a
`growth-run-from-file` run after its growth run (`growth_run_name`). Once a stack-file
run's target material exists, its name and tags say the material's id
(`show_material`), so the runs list shows it and can filter by it.
"""

import functools
import re
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

__all__ = [
    "file_run_name",
    "folder_run_name",
    "growth_run_name",
    "is_made_up_run_name",
    "show_material",
    "stack_run_name",
]


@functools.cache
def _slug_words() -> frozenset[str]:
    """The words of Prefect's generated run names (`generate_slug(2)`, from coolname)."""
    try:
        import coolname
        from coolname.loader import load_config

        config = load_config(Path(coolname.__file__).parent / "data")
    except Exception:  # coolname changed: fall back on the names' shape alone
        return frozenset()
    words: set[str] = set()
    for spec in config.values():
        listed = spec.get("words") if spec.get("type") == "words" else None
        if isinstance(listed, list):
            words.update(str(word) for word in listed)
    return frozenset(words)


# The first word of the names the classic UI's run form proposes, e.g. `xi309-emila-manifold`.
_GREEK = (
    "alpha|beta|gamma|delta|epsilon|zeta|eta|theta|iota|kappa|lambda|mu|nu|xi|omicron|pi|rho"
    "|sigma|tau|upsilon|phi|chi|psi|omega"
)


def is_made_up_run_name(name: str | None) -> bool:
    """Whether a flow run's name was made up by Prefect or its UI, not typed by a person.

    For a flow's `flow_run_name` callable that names runs after what they do, as the
    stack-file flows and `flows/stack_report.py` do, but keeps a name a person typed.
    Made up: no name; Prefect's two-word names (`smart-dugong`, from
    `prefect.utilities.names.generate_slug(2)`: two words of coolname's lists), which
    runs of a deployment, subflows and runs an Automation starts get; the names the
    UI's Custom run form proposes, which a person may leave as they are (`Small-Jacana`,
    an adjective and an animal, capitalised; in the classic UI a Greek letter with
    digits and words, `xi309-emila-manifold`). Any other name counts as typed. A person
    who types exactly such a shape loses it: the price of not reading the UI's word
    lists.

    Args:
        name: The run's name, e.g. `prefect.runtime.flow_run.get_name()`.

    Returns:
        True if the name is of a shape Prefect or its UI makes up.

    Example:
        ```python
        from prefect_atomscale.flows import is_made_up_run_name

        print(is_made_up_run_name("Small-Jacana"), is_made_up_run_name("Lab check 12"))
        # True False
        ```
    """
    if not name:
        return True
    if re.fullmatch(rf"(?:{_GREEK})\d*(?:-[a-z]+)+", name):  # the classic UI's
        return True
    if re.fullmatch(r"[A-Z][a-z]+-[A-Z][a-z]+", name):  # the new UI's
        return True
    if not re.fullmatch(r"[a-z]+(?:-[a-z]+)+", name):
        return False
    words = _slug_words()
    if not words:
        return name.count("-") == 1
    parts = name.split("-")
    return any(
        "-".join(parts[:cut]) in words and "-".join(parts[cut:]) in words
        for cut in range(1, len(parts))
    )


def file_run_name(path: str) -> str:
    """The name of a `stack-from-file` run before its target material is known."""
    return f"stack-from-file-{Path(path).name}"


def stack_run_name() -> str:
    """A `stack-from-file` run's name: `stack-from-file-<file>`, unless a person typed one."""
    current = flow_run.get_name()
    if not is_made_up_run_name(current):
        return str(current)
    return file_run_name(str(flow_run.parameters.get("path", "")))


def folder_run_name() -> str:
    """A `stacks-from-folder` run's name: `stacks-from-folder-<folder's name>`, unless typed."""
    current = flow_run.get_name()
    if not is_made_up_run_name(current):
        return str(current)
    folder = Path(str(flow_run.parameters.get("folder", ""))).resolve()
    return f"stacks-from-folder-{folder.name}"


def growth_run_name() -> str:
    """A `growth-run-from-file` run's name: `growth-run-<run name>`, unless typed.

    `growth-run-from-<file>` when the growth run's name is not given.
    """
    current = flow_run.get_name()
    if not is_made_up_run_name(current):
        return str(current)
    named = flow_run.parameters.get("run_name")
    if isinstance(named, str) and named.strip():
        return f"growth-run-{named.strip()}"
    return f"growth-run-from-{Path(str(flow_run.parameters.get('path', ''))).name}"


def show_material(path: str, sample_id: int) -> None:
    """Name the current run `stack-from-file-<file>-s<id>` (unless typed) and tag its id.

    Through the API: Prefect lets a running flow change its own name and tags, not its
    parameters. Outside a flow run, nothing to do.
    """
    current_id = flow_run.get_id()
    if current_id is None:
        return
    run_id = UUID(current_id)
    current = flow_run.get_name()
    ours = current == file_run_name(path) or is_made_up_run_name(current)
    name = f"{file_run_name(path)}-s{sample_id}" if ours else None
    tag = f"target-material-{sample_id}"
    try:
        with get_client(sync_client=True) as client:
            tags = list(client.read_flow_run(run_id).tags)
            client.update_flow_run(run_id, name=name, tags=tags if tag in tags else [*tags, tag])
    except Exception as exc:  # a name is never worth a failed stack
        get_run_logger().warning(
            "Could not put target material %s in this run's name and tags: %r", sample_id, exc
        )
