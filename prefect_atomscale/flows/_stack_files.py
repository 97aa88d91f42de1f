"""The stack-file flows: one file (`stack_from_file`), or every new file in a folder.

"Created yet" is decided by the Atomscale account itself, not by Prefect's cache: one
`GET /target-materials/` per run lists what exists, and a file counts as created when
a target material of the file's name, carrying this account's ownership token, holds
all the file's layers. A run can then go to any worker, whatever its PREFECT_HOME, and
a file created months ago is still skipped after the task cache expired. A colleague's
target material of the same name is never taken or extended. One of ours with only
some of the layers (an earlier run failed halfway, or layers were deleted at the
service) gets the missing ones, whatever the cache remembers; one with different layers
is left alone and the run fails naming the file. A new target material is created
together with its layers in one request (`create_target_material(..., layers=...)`),
so it is never left empty; the package's `create_layers` task then adopts or writes
each layer.

What a run shows in the Prefect UI lives beside this module: its name and tags
(`_run_names`), what a failed run reports (`_stack_failures`), and a folder run's
table (`_folder_artifacts`).
"""

# No `from __future__ import annotations`: Prefect checks a flow's parameters with a
# model of its signature, and a served run could not resolve the string "Credentials"
# ("`Stacks_From_FolderModel` is not fully defined").
import re
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed
from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from prefect_atomscale._artifacts import plural, publish_stack_artifacts
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
    STACK_FILE_SUFFIXES,
    ExistingStack,
    InvalidStackFileError,
    StackConflictError,
    StackSpec,
    compare_with_existing,
    load_stack_file,
)
from prefect_atomscale._tasks import create_target_material
from prefect_atomscale._web_app import web_app_url
from prefect_atomscale.flows._folder_artifacts import publish_folder_summary
from prefect_atomscale.flows._run_names import (
    _generated as _generated,  # re-exported: the other flows import it from here
)
from prefect_atomscale.flows._run_names import file_run_name, show_material
from prefect_atomscale.flows._stack_failures import (
    SAMPLE_ID,
    SHORT,
    not_created,
    positions,
    publish_invalid_file,
    reported_by_the_flow,
    short_reason,
    stack_failed,
)

__all__ = [
    "StackFolderError",
    "StackOutcome",
    "find_existing_stacks",
    "stack_files",
    "stack_from_file",
    "stacks_from_folder",
]

DEFAULT_FOLDER = "flows/examples"


# Set by `stacks_from_folder` around each subflow it starts: the file's spec and what
# the folder's listing found for it, so the subflow does not list the account again.
_PARENT_LISTING: ContextVar[dict[str, tuple[StackSpec, ExistingStack]] | None] = ContextVar(
    "prefect_atomscale_parent_listing", default=None
)


def _listed_by_parent(path: str, spec: StackSpec) -> ExistingStack | None:
    """What the folder run that started this subflow found for `path`, if it did.

    A function of its own, so that the flow's code refers to no ContextVar: Dask and
    other pickling of the flow by value cannot pickle one.
    """
    known = (_PARENT_LISTING.get() or {}).get(path)
    return known[1] if known is not None and known[0] == spec else None


class _SavedBlock:
    """Parameter schema of a block parameter that a deployment can give as a reference.

    Prefect's server checks a deployment's parameters against
    `oneOf: [<the block's schema>, {"$ref": ...}]`. Every AtomscaleCredentials field is
    optional and extra keys are allowed, so a `{"$ref": ...}` object matches both and
    the server refuses it ("is valid under each of"). Saying that the block's own form
    has no key named `$ref` (with `propertyNames`: the server drops every `required`
    before it checks) leaves exactly one match. The UI still sees a block type slug and
    offers its picker of saved blocks.
    """

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        handler.resolve_ref_schema(schema)["propertyNames"] = {"not": {"const": "$ref"}}
        return schema


Credentials = Annotated[AtomscaleCredentials, _SavedBlock()]

Status = Literal[
    "created", "completed", "already created", "invalid", "conflict", "failed", "not attempted"
]


class StackOutcome(BaseModel):
    """What happened to one stack file, as `stack_from_file` and `stacks_from_folder` report it.

    Attributes:
        path: The stack file.
        status: `created` (target material and layers written now), `completed` (the
            missing layers of an earlier, partial run added), `already created`
            (nothing written), `invalid` (the file has problems; nothing sent),
            `conflict` (its name is taken by a different stack; nothing sent),
            `failed` (its flow run failed) or `not attempted` (not run: the service
            proved unreachable on an earlier file).
        name: The target material's name, if the file could be read.
        sample_id: The target material's id, when it exists.
        layers: How many layers it has, when it exists.
        message: What was done, or what is wrong.
        flow_run_id: The file's `stack-from-file` run, when the folder flow ran one.
        url: The target material's page in the Atomscale web app, when it exists (the
            address is derived from the API's base URL, a guess: see the stack-files
            guide).

    Example:
        ```python
        from prefect_atomscale.flows import StackOutcome

        outcome = StackOutcome(path="sl.yaml", status="created", name="SL", sample_id=7,
                               layers=40, message="40 created now")
        print(outcome.status, outcome.layers)  # created 40
        ```
    """

    path: str
    status: Status
    name: str | None = None
    sample_id: int | None = None
    layers: int | None = None
    message: str = ""
    flow_run_id: str | None = None
    url: str | None = None


class StackFolderError(Exception):
    """Some stack files of a folder could not be created; the message names them and why.

    `stacks_from_folder` raises it at the end of its run, after every other file was
    created, so one bad file never holds back the rest. The message groups the files
    by reason, e.g. `2 of 9 stack files in stacks were not created: a.yaml (failed:
    ...); b.yaml (not attempted: service unreachable: ...)`.

    Example:
        ```python
        from pathlib import Path

        from prefect_atomscale import AtomscaleCredentials
        from prefect_atomscale.flows import StackFolderError, stacks_from_folder

        Path("stacks").mkdir()
        Path("stacks/typo.yaml").write_text('''
        name: BTO film with a typo
        substrate: SrTiO3
        layers:
          - composition: BaTiO4x
        ''')
        try:
            stacks_from_folder("stacks", AtomscaleCredentials.load("atomscale"))
        except StackFolderError as exc:
            print(exc)  # 1 of 1 stack files in stacks were not created: typo.yaml (invalid: ...
        ```
    """


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


def _run_name() -> str:
    current = flow_run.get_name()
    if not _generated(current):
        return str(current)  # typed by a person: keep it
    return file_run_name(str(flow_run.parameters.get("path", "")))


def _folder_run_name() -> str:
    current = flow_run.get_name()
    if not _generated(current):
        return str(current)
    folder = Path(str(flow_run.parameters.get("folder", DEFAULT_FOLDER))).resolve()
    return f"stacks-from-folder-{folder.name}"


def _create(
    credentials: AtomscaleCredentials, spec: StackSpec, existing: ExistingStack, path: str
) -> StackOutcome:
    """Create what `existing` says is missing, publish the artifacts, say what happened."""
    logger = get_run_logger()
    layers = spec.layer_specs()
    base_url = credentials.resolve().base_url
    if existing.status == "conflict":
        raise not_created(spec, path, StackConflictError(path, spec.name, existing.problems))
    if existing.status == "complete" and existing.material is not None:
        material = existing.material
        url = web_app_url(base_url, material.sample_id)
        show_material(path, material.sample_id)
        ordered = [existing.layers[position] for position in sorted(existing.layers)]
        summary = "already created, nothing written"
        logger.info(
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
    wanted = [layer.arguments() for layer in layers]
    # Layers created with the material: create_layers adopts them, and counts them as
    # created in its atomscale.stack.completed.
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
    url = web_app_url(base_url, material.sample_id)
    show_material(path, material.sample_id)
    # One listing of the account: adopts what is there, writes what is still missing.
    try:
        with made_with_material(material.sample_id, made_with):
            written = create_layers.with_options(refresh_cache=True)(
                credentials, material.sample_id, wanted
            )
    except AtomscaleError as exc:
        raise stack_failed(spec, existing, material, path, exc, url) from exc
    _log_layers(material, written, existing)
    logger.info(
        "Target material %s %r on %s has %s: %s.",
        material.sample_id,
        material.sample_name,
        material.substrate,
        plural(len(written), "layer"),
        summary,
    )
    publish_stack_artifacts(material, written, summary=summary, source=path, url=url)
    return StackOutcome(
        path=path,
        status=status,
        name=spec.name,
        sample_id=material.sample_id,
        layers=len(written),
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


def _log_layers(material: TargetMaterial, written: list[Layer], existing: ExistingStack) -> None:
    """One line per layer, as the UI's log shows a run: what it is, its record, what happened."""
    logger = get_run_logger()
    for layer in written:
        what = " ".join(filter(None, [layer.composition_string, layer.orientation]))
        logger.info(
            "L%s %s: record %s (space group %s, %s), %s.",
            layer.layer_id,
            what,
            layer.id,
            layer.space_group or "not matched",
            layer.mp_id or "no Materials Project id",
            "already there" if layer.layer_id in existing.layers else "created",
        )


@flow(name="stack-from-file", flow_run_name=_run_name)
def stack_from_file(path: str, credentials: Credentials) -> StackOutcome:
    """Create the target material a stack file describes, unless it was created already.

    The run publishes the layer table and the stack picture, also when it fails after
    reading the file; a failure's message says which layers (L1 on the substrate), why,
    and what to do next. Once the target material exists, the run is renamed
    `stack-from-file-<file>-s<sample_id>` (a typed name is kept), tagged
    `target-material-<sample_id>`, and its Completed message links the material's page
    in the Atomscale web app.

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
            existing = _listed_by_parent(path, spec)  # the folder run just listed the account
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


def stack_files(folder: str | Path) -> list[Path]:
    """The stack files directly in `folder`, by name."""
    directory = Path(folder)
    if not directory.is_dir():
        where = (
            ""
            if directory.is_absolute()
            else f" (resolved against the working directory {Path.cwd()}: {Path.cwd() / directory})"
        )
        raise FileNotFoundError(f"The stack folder {str(folder)!r} does not exist{where}.")
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix.lower() in STACK_FILE_SUFFIXES
    )


@flow(name="stacks-from-folder", flow_run_name=_folder_run_name)
def stacks_from_folder(folder: str, credentials: Credentials) -> list[StackOutcome]:
    """Create the target material of every stack file in a folder that is not created yet.

    Every file is checked first; invalid ones are reported and skipped, the others go
    on. One `GET /target-materials/` tells which files are already created (skipped,
    no flow run), partly created (missing layers added) or in conflict with what
    exists (reported, nothing sent). Each file to create runs as its own
    `stack-from-file` subflow, with its own artifacts; it uses this run's listing
    rather than asking again. Once a transient fault outlived its retries (in the
    listing or in a subflow), the service is taken as unreachable and the files left
    are `not attempted`, so an outage fails the run at once instead of file by file.
    Each file that is not created gets one ERROR line in this run's log, with its
    reason; the table artifact `stack-folder-<folder>` has, per file, links to its
    subflow run and that run's artifacts, its target material's id (linked to the
    Atomscale web app), its status and reason. The run fails at the end,
    naming the files and why, if any file was invalid, in conflict, failed or not
    attempted.

    Args:
        folder: Folder of stack files (.yaml, .yml, .json, .csv), relative to the
            working directory or absolute. Subfolders are not read.
        credentials: The Atomscale account to write to: a saved Atomscale Credentials
            block, which holds the account's API key. Each file's run uses the same
            block.

    Returns:
        One outcome per file.

    Raises:
        StackFolderError: Some files were invalid, in conflict or failed; the others
            were created all the same.

    Example:
        ```python
        from pathlib import Path

        from prefect_atomscale import AtomscaleCredentials
        from prefect_atomscale.flows import stacks_from_folder

        credentials = AtomscaleCredentials.load("atomscale")
        Path("stacks").mkdir()
        Path("stacks/sto_buffer.csv").write_text('''# name: STO buffer #2
        # substrate: SrTiO3
        layer,composition,orientation
        1,SrTiO3,001
        2,SrRuO3,001
        ''')
        for outcome in stacks_from_folder("stacks", credentials):
            print(Path(outcome.path).name, outcome.status)
        ```
    """
    logger = get_run_logger()
    outcomes: dict[str, StackOutcome] = {}
    specs: dict[str, StackSpec] = {}
    for file in stack_files(folder):
        try:
            specs[str(file)] = load_stack_file(file)
        except InvalidStackFileError as exc:
            outcomes[str(file)] = _problem(str(file), "invalid", _invalid_reason(exc))
    by_name: dict[str, list[str]] = {}
    for path, spec in specs.items():
        by_name.setdefault(spec.name, []).append(path)
    for name, paths in by_name.items():
        if len(paths) > 1:
            names = ", ".join(Path(path).name for path in paths)
            reason = f"{len(paths)} files describe {name!r} ({names}); rename all but one"
            for path in paths:
                del specs[path]
                outcomes[path] = _problem(path, "invalid", reason, name=name)
    logger.info("%s stack files in %s, %s valid.", len(outcomes) + len(specs), folder, len(specs))
    if specs:
        for path, outcome in _create_all(credentials, specs).items():
            outcomes[path] = outcome
    results = [outcomes[path] for path in sorted(outcomes)]
    key = publish_folder_summary(folder, results, PROBLEMS, get_args(Status))
    problems = [outcome for outcome in results if outcome.status in PROBLEMS]
    counts = {status: sum(o.status == status for o in results) for status in get_args(Status)}
    logger.info(
        "Folder %s: %s.",
        folder,
        ", ".join(f"{count} {status}" for status, count in counts.items() if count) or "no files",
    )
    if problems:
        message = (
            f"{len(problems)} of {len(results)} stack files in {folder} were not created: "
            + _grouped(problems)
            + f". The table artifact {key} links each file's run."
        )
        logger.error("%s", message)
        raise StackFolderError(message)
    return results


# Statuses of a file that was not created.
PROBLEMS = ("invalid", "conflict", "failed", "not attempted")


def _problem(path: str, status: Status, reason: str, **fields: Any) -> StackOutcome:
    """A file that was not created: its reason logged in this run, one ERROR line."""
    get_run_logger().error("%s: %s: %s", Path(path).name, status, reason)
    return StackOutcome(path=path, status=status, message=reason, **fields)


def _invalid_reason(exc: InvalidStackFileError) -> str:
    first = exc.problems[0].describe().splitlines()[0] if exc.problems else str(exc)
    more = len(exc.problems) - 1
    return first + (f" (and {more} more {'problem' if more == 1 else 'problems'})" if more else "")


def _reason_of(path: str, message: str) -> str:
    """The gist of an error about `path`, without the path it starts with."""
    for prefix in (f"{path}: ", f"{path} "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return short_reason(message)


def _grouped(problems: Sequence[StackOutcome]) -> str:
    """The files not created, with why; files that share a reason are named together.

    E.g. `a.yaml (failed: ...); b.yaml, c.yaml (not attempted: ...)`.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for outcome in problems:
        groups.setdefault((outcome.status, outcome.message), []).append(Path(outcome.path).name)
    return "; ".join(
        f"{', '.join(names)} ({status}: {short_reason(reason, 100)})"
        for (status, reason), names in groups.items()
    )


def _create_all(
    credentials: AtomscaleCredentials, specs: dict[str, StackSpec]
) -> dict[str, StackOutcome]:
    """Look up every file in one listing, then run a subflow for each file to create.

    Once a transient fault outlived its retries (the listing's, or a subflow's), the
    service is taken as unreachable: the files left are not run, and say so.
    """
    logger = get_run_logger()
    outcomes: dict[str, StackOutcome] = {}
    try:
        found = find_existing_stacks(credentials, list(specs.values()))
        base_url = credentials.resolve().base_url
    except AtomscaleError as exc:
        reason = _unreachable(exc) or short_reason(str(exc))
        status: Status = "not attempted"
        return {
            path: _problem(path, status, reason, name=spec.name) for path, spec in specs.items()
        }
    unreachable: str | None = None
    for (path, spec), existing in zip(specs.items(), found, strict=True):
        if existing.status == "complete" and existing.material is not None:
            logger.info(
                "%s: already created as target material %s; skipped.",
                path,
                existing.material.sample_id,
            )
            outcomes[path] = StackOutcome(
                path=path,
                status="already created",
                name=spec.name,
                sample_id=existing.material.sample_id,
                layers=len(existing.layers),
                message="skipped",
                url=web_app_url(base_url, existing.material.sample_id),
            )
        elif existing.status == "conflict":
            message = str(StackConflictError(path, spec.name, existing.problems))
            outcomes[path] = _problem(path, "conflict", _reason_of(path, message), name=spec.name)
        elif unreachable is not None:
            outcomes[path] = _problem(path, "not attempted", unreachable, name=spec.name)
        else:
            # The subflow takes this run's listing instead of asking again.
            token = _PARENT_LISTING.set({path: (spec, existing)})
            try:
                state = stack_from_file(path, credentials, return_state=True)
            finally:
                _PARENT_LISTING.reset(token)
            run_id = str(state.state_details.flow_run_id or "") or None
            if state.is_completed():
                outcomes[path] = state.result().model_copy(update={"flow_run_id": run_id})
                continue
            error = state.result(raise_on_failure=False)
            reason = (
                vars(error).get(SHORT) or _reason_of(path, str(error))
                if isinstance(error, BaseException)
                else state.message or "no reason given"
            )
            # A stack that failed halfway has a target material: the table links it.
            sample_id = vars(error).get(SAMPLE_ID) if isinstance(error, BaseException) else None
            url = web_app_url(base_url, sample_id) if isinstance(sample_id, int) else None
            outcomes[path] = _problem(
                path,
                "failed",
                reason,
                name=spec.name,
                flow_run_id=run_id,
                sample_id=sample_id,
                url=url,
            )
            if isinstance(error, AtomscaleError):
                unreachable = _unreachable(error)
    return outcomes


def _unreachable(error: AtomscaleError) -> str | None:
    """`service unreachable: <cause>` if `error` is a transient fault.

    A transient error that reaches the flow outlived its retries. None for an error
    that says nothing about the service's health.
    """
    if not error.transient:
        return None
    # Which request it was is in the run's log; the summary needs what happened.
    cause = re.sub(r" \((?:GET|POST|PATCH|PUT|DELETE) [^)]*\)", "", str(error))
    # A stack summary names the layers first; the cause is what the service did.
    said = re.search(r"(Could not connect to .*|No reply from .*|Atomscale answered .*)", cause)
    return f"service unreachable: {short_reason(said[1] if said else cause, 120)}"
