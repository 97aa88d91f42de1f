"""The `stack-from-file` flow: create the target material one stack file describes.

The story of a run, in order: read the file (a bad file fails here, before any
request); find what the account holds under its name (`find_existing_stacks`, one
`GET /target-materials/`, or the folder run's listing); then nothing to do, the missing
layers to add, or a new target material created together with its layers in one
request, which `create_layers` reads back. The run publishes the layer table and the
picture and ends Completed with a message that links the target material.

"Created yet" is decided by the Atomscale account itself, not by Prefect's cache: a file
counts as created when a target material of the file's name, carrying this account's
ownership token, holds all the file's layers. A run can then go to any worker, whatever
its PREFECT_HOME, and a file created months ago is still skipped after the task cache
expired. A colleague's target material of the same name is never taken or extended;
one of ours with only some of the layers gets the missing ones; one with different
layers is left alone and the run fails naming the file.

What the run is called (`_run_names`), what it logs per layer (`_layer_log`) and what
it reports when it fails (`_stack_failures`) live beside this module.
"""

# No `from __future__ import annotations`: Prefect checks a flow's parameters with a
# model of its signature, and a served run could not resolve the string "Credentials".
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed

from prefect_atomscale._artifacts import plural, publish_invalid_file, publish_stack_artifacts
from prefect_atomscale._bulk import create_layers, made_with_material
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleError
from prefect_atomscale._models import Layer, TargetMaterial
from prefect_atomscale._ownership import owner_of
from prefect_atomscale._pool import client_for
from prefect_atomscale._retries import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAYS,
    RETRY_JITTER_FACTOR,
    retry_if_transient,
)
from prefect_atomscale._stacks import (
    ExistingStack,
    InvalidStackFileError,
    StackConflictError,
    StackSpec,
    compare_with_existing,
    load_stack_file,
)
from prefect_atomscale._tasks import create_target_material
from prefect_atomscale._web_app import web_app_url
from prefect_atomscale.flows._block_parameter import Credentials
from prefect_atomscale.flows._layer_log import log_layers, positions
from prefect_atomscale.flows._outcomes import StackOutcome, Status
from prefect_atomscale.flows._parent_listing import listed_by_parent
from prefect_atomscale.flows._reported_by_the_flow import reported_by_the_flow
from prefect_atomscale.flows._run_names import show_material, stack_run_name
from prefect_atomscale.flows._stack_failures import not_created, stack_failed

__all__ = ["find_existing_stacks", "stack_from_file"]


@task(
    name="find-existing-stacks",
    task_run_name="find-existing-stacks",
    cache_policy=NO_CACHE,
    retries=DEFAULT_RETRIES,
    retry_delay_seconds=DEFAULT_RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=retry_if_transient,
)
def find_existing_stacks(
    credentials: AtomscaleCredentials, specs: list[StackSpec]
) -> list[ExistingStack]:
    """Compare stacks with what the account holds, with one `GET /target-materials/`."""
    rows = client_for(credentials).list_rows("looking up which stack files were created")
    owner = owner_of(credentials)
    return [compare_with_existing(spec, rows, owner) for spec in specs]


@flow(name="stack-from-file", flow_run_name=stack_run_name)
def stack_from_file(path: str, credentials: Credentials) -> StackOutcome:
    """Create the target material a stack file describes, unless it was created already.

    The run publishes the layer table and the stack picture, also when it fails after
    reading the file; a failure's message says which layers (L1 on the substrate), why,
    and what to do next. Once the target material exists, the run is renamed
    `stack-from-file-<file>-s<sample_id>` (a typed name is kept), tagged
    `target-material-<sample_id>`, and its Completed message links the material's page
    in the Atomscale web app. Its log has a line per layer, or a summary for a stack of
    more than 50 layers (the layer table has every layer).

    Args:
        path: The stack file (.yaml, .yml, .json or .csv), relative to the working
            directory or absolute.
        credentials: The Atomscale account to write to: a saved Atomscale Credentials
            block, which holds the account's API key.

    Returns:
        What happened: created, completed (missing layers added) or already created.

    Raises:
        InvalidStackFileError: The file cannot be used; nothing was sent.
        StackConflictError: The account has a different stack of the file's name.

    Example:
        ```python
        from pathlib import Path

        from prefect_atomscale import AtomscaleCredentials
        from prefect_atomscale.flows import stack_from_file

        credentials = AtomscaleCredentials.load("atomscale")
        Path("gan_hemt.json").write_text('''{
          "name": "AlGaN/GaN HEMT #8",
          "substrate": "Al2O3",
          "metadata": {"growth": "MOCVD"},
          "layers": [
            {"composition": "AlN", "orientation": "0001"},
            {"composition": "GaN", "orientation": "0001"},
            {"composition": "Al0.25Ga0.75N", "orientation": "0001"}
          ]
        }''')
        outcome = stack_from_file("gan_hemt.json", credentials)
        print(outcome.status, outcome.layers)  # created 3 (already created 3 when run again)
        print(stack_from_file("gan_hemt.json", credentials).status)  # already created
        ```
    """
    logger = get_run_logger()
    # The summary below is the run's first ERROR line: the tasks' own are warnings here.
    with reported_by_the_flow(flow_run.get_id()):
        try:
            spec = load_stack_file(path)  # a bad file fails here, before any request
            logger.info(
                "%s: %r on %s, %s.",
                path,
                spec.name,
                spec.substrate,
                plural(len(spec.layer_specs()), "layer"),
            )
            existing = listed_by_parent(path, spec)  # the folder run just listed the account
            if existing is None:
                try:
                    [existing] = find_existing_stacks(credentials, [spec])
                except AtomscaleError as exc:
                    raise not_created(spec, path, exc) from exc
            outcome = _create(credentials, spec, existing, path)
        except Exception as exc:
            # Readable first: Prefect's own line ("Encountered exception ...") shows the
            # exception's repr, with a multi-line message as one line of literal \n.
            logger.error("%s", exc)
            if isinstance(exc, InvalidStackFileError):
                publish_invalid_file(path, exc)
            raise
    # A Completed state with a message: the run ends in it; a caller gets `outcome`.
    return _completed(outcome)  # type: ignore[no-any-return]


def _create(
    credentials: AtomscaleCredentials, spec: StackSpec, existing: ExistingStack, path: str
) -> StackOutcome:
    """Create what `existing` says is missing, publish the artifacts, say what happened."""
    if existing.status == "conflict":
        error = StackConflictError(path, spec.name, existing.problems, existing.differences)
        raise not_created(spec, path, error)
    if existing.status == "complete" and existing.material is not None:
        return _already_created(credentials, spec, existing.material, existing.layers, path)
    logger = get_run_logger()
    layers = spec.layer_specs()
    wanted = [layer.arguments() for layer in layers]
    # Layers created with the material: create_layers reads them back, and counts them
    # as created in its log line and its atomscale.stack.completed.
    made_with: list[int] = []
    # The service, just asked, is the truth here: a cache entry from an earlier run
    # (whose layers may since have been deleted) must not stop the writes.
    if existing.status == "partial" and existing.material is not None:
        material = existing.material
        logger.info(
            "%s: target material %s has %s of %s; adding %s.",
            path,
            material.sample_id,
            len(existing.layers),
            plural(len(layers), "layer"),
            positions(existing.missing),
        )
        status: Status = "completed"
        summary = f"{len(existing.missing)} created now, {len(existing.layers)} already there"
    else:
        try:
            material = create_target_material.with_options(refresh_cache=True)(
                credentials, spec.name, spec.substrate, spec.metadata, layers=wanted
            )
        except AtomscaleError as exc:
            raise not_created(spec, path, exc) from exc
        status = "created"
        summary = f"{len(wanted)} created now"
        made_with = list(range(1, len(wanted) + 1))
    url = web_app_url(credentials.resolve().base_url, material.sample_id)
    show_material(path, material.sample_id)
    # One listing of the account: adopts what is there, writes what is still missing.
    # Its own log line says what it wrote; the layers' lines below end the story.
    try:
        with made_with_material(material.sample_id, made_with):
            written = create_layers.with_options(refresh_cache=True)(
                credentials, material.sample_id, wanted
            )
    except AtomscaleError as exc:
        raise stack_failed(spec, existing, material, path, exc, url) from exc
    published = publish_stack_artifacts(material, written, summary=summary, source=path, url=url)
    log_layers(written, set(existing.layers), f"layers-{published.key}")
    return StackOutcome(
        path=path,
        status=status,
        name=spec.name,
        sample_id=material.sample_id,
        layers=len(written),
        message=summary,
        url=url,
    )


def _already_created(
    credentials: AtomscaleCredentials,
    spec: StackSpec,
    material: TargetMaterial,
    layers: dict[int, Layer],
    path: str,
) -> StackOutcome:
    """Nothing to write: show the target material that holds the whole stack."""
    url = web_app_url(credentials.resolve().base_url, material.sample_id)
    show_material(path, material.sample_id)
    ordered = [layers[position] for position in sorted(layers)]
    summary = "already created, nothing written"
    get_run_logger().info(
        "%s: already created as target material %s with all its %s; nothing to do.",
        path,
        material.sample_id,
        plural(len(ordered), "layer"),
    )
    publish_stack_artifacts(material, ordered, summary=summary, source=path, url=url)
    return StackOutcome(
        path=path,
        status="already created",
        name=spec.name,
        sample_id=material.sample_id,
        layers=len(ordered),
        message=summary,
        url=url,
    )


def _completed(outcome: StackOutcome) -> Any:
    """The run's final state: Completed, its message naming the target material and its link.

    A flow that returns a state ends in it; calling the flow still returns `outcome`.
    Typed `Any` because the flow is declared to return a `StackOutcome`, which callers get.
    """
    said = f"Target material {outcome.sample_id} ({outcome.name!r}): {outcome.message}."
    return Completed(
        message=f"{said} Open in Atomscale: {outcome.url}" if outcome.url else said,
        data=outcome,
    )
