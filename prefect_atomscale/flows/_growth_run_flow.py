"""The flow from a stack file to its growth run (`growth_run_from_file`).

The target material first, then the physical sample that grows it, linked, and a table
that says which name the instrument's data is uploaded to.
"""

# No `from __future__ import annotations`: Prefect builds a model of the flow's signature
# at run time, and a served run could not resolve the string "Credentials".
import re

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from prefect_atomscale._exceptions import AtomscaleValidationError
from prefect_atomscale._growth_run_tasks import create_growth_run
from prefect_atomscale._growth_runs import IfLinked, checked_if_linked, checked_run_name
from prefect_atomscale._stacks import load_stack_file
from prefect_atomscale.flows._block_parameter import Credentials
from prefect_atomscale.flows._outcomes import StackOutcome
from prefect_atomscale.flows._run_names import growth_run_name
from prefect_atomscale.flows._stack_from_file import stack_from_file

__all__ = ["GrowthRunOutcome", "growth_run_from_file"]


class GrowthRunOutcome(BaseModel):
    """What `growth_run_from_file` made: the target material and the growth run, linked.

    Attributes:
        path: The stack file.
        stack: What happened to the file's target material (see `StackOutcome`).
        physical_sample_id: The growth run's id (a UUID).
        growth_run: The growth run's name: pass it to the SDK's
            `Client.upload(files, physical_sample=...)` on the instrument PC.
        sample_id: The target material the growth run is linked to.

    Example:
        ```python
        from prefect_atomscale.flows import GrowthRunOutcome, StackOutcome

        outcome = GrowthRunOutcome(
            path="pld_0412.yaml",
            stack=StackOutcome(path="pld_0412.yaml", status="created", sample_id=12),
            physical_sample_id="0b7c6a4e-3f7e-4c57-9d0e-1a2b3c4d5e6f",
            growth_run="PLD-0412",
            sample_id=12,
        )
        print(outcome.growth_run, outcome.sample_id)  # PLD-0412 12
        ```
    """

    path: str
    stack: StackOutcome
    physical_sample_id: str
    growth_run: str
    sample_id: int | None


def _artifact_key(name: str) -> str:
    """An artifact key from a run name: Prefect allows lower-case letters, digits, dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "unnamed"
    return f"growth-run-{slug}"


def _publish(outcome: GrowthRunOutcome, substrate: str, layers: int) -> None:
    stack = outcome.stack
    rows = [
        {
            "record": "target material",
            "name": stack.name or "",
            "id": str(stack.sample_id),
            "what": f"on {substrate}, {layers} layers ({stack.status})",
        },
        {
            "record": "growth run (physical sample)",
            "name": outcome.growth_run,
            "id": outcome.physical_sample_id,
            "what": f"linked to target material {outcome.sample_id}",
        },
        {
            "record": "upload the instrument's data with the atomscale SDK",
            "name": outcome.growth_run,
            "id": "",
            "what": f"Client().upload(files, physical_sample={outcome.growth_run!r})",
        },
    ]
    create_table_artifact(
        key=_artifact_key(outcome.growth_run),
        table=rows,
        description=(
            f"Growth run {outcome.growth_run!r} grows target material {stack.sample_id} "
            f"({stack.name!r}, from {outcome.path}). On the instrument PC, upload into it "
            f"by name: `atomscale.Client().upload(files, physical_sample={outcome.growth_run!r})`."
        ),
    )


@flow(name="growth-run-from-file", flow_run_name=growth_run_name)
def growth_run_from_file(
    path: str,
    credentials: Credentials,
    run_name: str | None = None,
    if_linked: IfLinked = "error",
) -> GrowthRunOutcome:
    """Create a stack file's target material and the growth run that grows it, linked.

    First the target material, exactly as `stack_from_file` does it (a subflow: created,
    completed or already there), then `create_growth_run` with its `sample_id`: the
    physical sample of the run's name is created, or found when it exists, and linked.
    A table artifact shows both records and the name to upload the instrument's data to
    with the official SDK (`Client.upload(files, physical_sample=NAME)`). Running it
    again changes nothing: both steps find what exists.

    Args:
        path: The stack file (.yaml, .yml, .json or .csv).
        credentials: The Atomscale account to write to: a saved Atomscale Credentials
            block, which holds the account's API key.
        run_name: The growth run's name; None takes the file's `growth_run` field.
        if_linked: For a growth run of that name linked to another target material:
            `"error"` (fail, change nothing), `"relink"` or `"keep"`.

    Returns:
        The target material's outcome and the growth run it is linked to.

    Raises:
        AtomscaleValidationError: No run name (neither `run_name` nor the file's
            `growth_run`), a blank or too long one, or a bad `if_linked`; checked, with
            the file, before any request.
        InvalidStackFileError: The file cannot be used; nothing was sent.
        GrowthRunLinkedError: The growth run is linked to another target material and
            `if_linked="error"`.

    Example:
        ```python
        from pathlib import Path

        from prefect_atomscale import AtomscaleCredentials
        from prefect_atomscale.flows import growth_run_from_file

        Path("sro_film.yaml").write_text('''
        name: SRO film for PLD-2026-0600
        substrate: SrTiO3
        growth_run: PLD-2026-0600
        layers:
          - composition: SrRuO3
            orientation: "001"
        ''')
        outcome = growth_run_from_file("sro_film.yaml", AtomscaleCredentials.load("atomscale"))
        print(outcome.growth_run, outcome.sample_id == outcome.stack.sample_id)
        # PLD-2026-0600 True
        ```
    """
    logger = get_run_logger()
    try:
        spec = load_stack_file(path)  # a bad file fails here, before any request
        where = f"growth_run_from_file({path!r})"
        named = run_name if run_name is not None else spec.growth_run
        if named is None:
            raise AtomscaleValidationError(
                f"{path} names no growth run. Pass run_name=..., or add a line "
                "'growth_run: NAME' to the file ('# growth_run: NAME' above a CSV "
                "file's header). Nothing was sent."
            )
        name = checked_run_name(named, where)
        choice = checked_if_linked(if_linked, where)
        stack = stack_from_file(path, credentials)
        run = create_growth_run(credentials, name, sample_id=stack.sample_id, if_linked=choice)
        outcome = GrowthRunOutcome(
            path=path,
            stack=stack,
            physical_sample_id=run.id,
            growth_run=run.name or name,
            sample_id=run.target_material_id,
        )
        _publish(outcome, spec.substrate, len(spec.layer_specs()))
        logger.info(
            "Growth run %r (%s) grows target material %s (%r). Upload the instrument's data "
            "with atomscale.Client().upload(files, physical_sample=%r).",
            outcome.growth_run,
            outcome.physical_sample_id,
            outcome.sample_id,
            stack.name,
            outcome.growth_run,
        )
        return outcome
    except Exception as exc:
        logger.error("%s", exc)  # readable first, as in stack_from_file
        raise
