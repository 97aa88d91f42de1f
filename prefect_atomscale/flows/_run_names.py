"""What a stack-file run is called and tagged: the names people look at in the runs list.

A run's name is made up by Prefect (or its UI's run form) unless a person typed one;
only made-up names are replaced (`_generated`). Once a run's target material exists, its
name and tags say the material's id (`show_material`), so the runs list shows it and
can filter by it.
"""

import functools
import re
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run


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


def _generated(name: str | None) -> bool:
    """Whether a run's name was made up by Prefect or its UI, not typed by a person.

    A run started from a deployment without a name, or as a subflow, gets a name from
    `prefect.utilities.names.generate_slug(2)`: two words of coolname's lists joined by
    a hyphen (`smart-dugong`). The UI's run form proposes one too, which a person may
    leave as it is: an adjective and an animal of its own lists, capitalised
    (`Small-Jacana`), or, in the classic UI, a Greek letter with digits, a star and
    maybe a cosmic noun (`xi309-emila-manifold`). Names of those shapes are replaced;
    any other name was typed (in the form, or given to `run_deployment`) and is kept.
    A person who types exactly such a shape loses it: the price of not reading the UI's
    word lists.
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
    ours = current == file_run_name(path) or _generated(current)
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
