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
"""

# No `from __future__ import annotations`: Prefect checks a flow's parameters with a
# model of its signature, and a served run could not resolve the string "Credentials"
# ("`Stacks_From_FolderModel` is not fully defined").
import copy
import functools
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from prefect_atomscale._artifacts import IN_PLACE, plural, publish_stack_artifacts
from prefect_atomscale._bulk import LAYER_OUTCOMES, create_layers, layer_outcomes
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


def _run_name() -> str:
    current = flow_run.get_name()
    if not _generated(current):
        return str(current)  # typed by a person: keep it
    return f"stack-from-file-{Path(str(flow_run.parameters.get('path', ''))).name}"


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
    if existing.status == "conflict":
        raise StackConflictError(path, spec.name, existing.problems)
    if existing.status == "complete" and existing.material is not None:
        material = existing.material
        ordered = [existing.layers[position] for position in sorted(existing.layers)]
        summary = "already created, nothing written"
        logger.info(
            "%s: already created as target material %s with all its %s; nothing to do.",
            path,
            material.sample_id,
            plural(len(ordered), "layer"),
        )
        publish_stack_artifacts(material, ordered, summary=summary, source=path)
        return StackOutcome(
            path=path,
            status="already created",
            name=spec.name,
            sample_id=material.sample_id,
            layers=len(ordered),
            message=summary,
        )
    wanted = [layer.arguments() for layer in layers]
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
            _positions(existing.missing),
        )
        status: Status = "completed"
        summary = f"{len(existing.missing)} created now, {len(existing.layers)} already there"
    else:
        try:
            material = create_target_material.with_options(refresh_cache=True)(
                credentials, spec.name, spec.substrate, spec.metadata, layers=wanted
            )
        except AtomscaleError as exc:
            message = (
                f"{path}: target material {spec.name!r} not created (none of its "
                f"{plural(len(layers), 'layer')} written): {exc}"
            )
            short = f"target material not created: {_short_reason(str(exc))}"
            raise _retyped(exc, message, short) from exc
        status = "created"
        summary = f"{len(wanted)} created now"
    # One listing of the account: adopts what is there, writes what is still missing.
    try:
        written = create_layers.with_options(refresh_cache=True)(
            credentials, material.sample_id, wanted
        )
    except AtomscaleError as exc:
        raise _stack_failed(spec, existing, material, path, exc) from exc
    _log_layers(material, written, existing)
    logger.info(
        "Target material %s %r on %s has %s: %s.",
        material.sample_id,
        material.sample_name,
        material.substrate,
        plural(len(written), "layer"),
        summary,
    )
    publish_stack_artifacts(material, written, summary=summary, source=path)
    return StackOutcome(
        path=path,
        status=status,
        name=spec.name,
        sample_id=material.sample_id,
        layers=len(written),
        message=summary,
    )


# The attribute of a stack run's error that holds its reason in a few words, for the
# folder run's table and message.
_SHORT = "_short_reason"


def _retyped(error: AtomscaleError, message: str, short: str) -> AtomscaleError:
    """The same error, same type and attributes (`transient`, ...), saying `message`.

    `short` is the reason in a few words, which a folder run shows for the file.
    """
    copied = copy.copy(error)
    copied.message = message
    copied.args = (message,)
    vars(copied).pop(LAYER_OUTCOMES, None)
    vars(copied)[_SHORT] = short
    return copied


def _short_reason(message: str, limit: int = 140) -> str:
    """The gist of an error message for a summary.

    What the service said, or the first sentence, cut to `limit` characters.
    """
    said = re.search(r"Atomscale answered (\d+) to .+? while .+?: (.+?)\.(?:\s|$)", message)
    if said:
        text = f"{said[2]} ({said[1]})"
    else:
        text = re.split(r"(?<=[.!?])\s", message.strip(), maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _stack_failed(
    spec: StackSpec,
    existing: ExistingStack,
    material: TargetMaterial,
    path: str,
    error: AtomscaleError,
) -> AtomscaleError:
    """Report a stack `create_layers` could not finish.

    Logs each layer, publishes the artifacts with a status per layer, and returns the
    error to raise, whose message is the stack's summary.
    """
    outcomes = layer_outcomes(error)
    specs = spec.layer_specs()
    layers: list[Layer] = []
    status: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for position, layer_spec in enumerate(specs, start=1):
        outcome = outcomes.get(position) if outcomes is not None else existing.layers.get(position)
        if isinstance(outcome, Layer):
            layers.append(outcome)
            status[position] = "already there" if position in existing.layers else "created"
            continue
        # Not at the service: drawn as it was asked for, without a record id.
        layers.append(
            Layer(
                id=0,
                layer_id=position,
                sample_id=material.sample_id,
                composition_string=layer_spec.composition,
                orientation=layer_spec.orientation,
            )
        )
        if isinstance(outcome, str):
            status[position], reasons[position] = "failed", _short_reason(outcome)
        else:  # the task failed before it tried the layers one by one
            status[position], reasons[position] = "not attempted", _short_reason(str(error))
    summary = _stack_summary(material.sample_id, status, reasons)
    _log_statuses(layers, status, reasons)
    publish_stack_artifacts(material, layers, summary=summary, source=path, status=status)
    return _retyped(error, f"{path}: {summary}", summary)


def _stack_summary(sample_id: int, status: Mapping[int, str], reasons: Mapping[int, str]) -> str:
    """What a stack that was not finished came to, in one sentence.

    E.g. `2 of 42 layers failed (L4: <reason>; L30: <reason>); the other 40 are in
    place in target material 17`. A reason several layers share is said once.
    """
    total = len(status)
    parts = []
    for state in ("failed", "not attempted"):
        positions = [position for position, s in sorted(status.items()) if s == state]
        if not positions:
            continue
        by_reason: dict[str, list[int]] = {}
        for position in positions:
            by_reason.setdefault(reasons.get(position, ""), []).append(position)
        said = [
            f"{_positions(where)}: {reason}" if reason else _positions(where)
            for reason, where in list(by_reason.items())[:_MAX_REASONS]
        ]
        if len(by_reason) > _MAX_REASONS:
            said.append(f"{len(by_reason) - _MAX_REASONS} more reasons in the log")
        parts.append(f"{len(positions)} of {plural(total, 'layer')} {state} ({'; '.join(said)})")
    in_place = sum(s in IN_PLACE for s in status.values())
    if in_place == 0:
        tail = f"no layer is in place in target material {sample_id}"
    elif in_place == total:
        tail = f"all {plural(total, 'layer')} are in place in target material {sample_id}"
    else:
        verb = "is" if in_place == 1 else "are"
        tail = f"the other {in_place} {verb} in place in target material {sample_id}"
    return "; ".join([*parts, tail])


_MAX_REASONS = 5


def _positions(positions: Sequence[int]) -> str:
    """L4, L30 or L4-L41 (a run of consecutive positions), at most 8 named."""
    runs: list[list[int]] = []
    for position in positions:
        if runs and position == runs[-1][-1] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    names = [f"L{run[0]}" if len(run) == 1 else f"L{run[0]}-L{run[-1]}" for run in runs]
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _log_statuses(
    layers: Sequence[Layer], status: Mapping[int, str], reasons: Mapping[int, str]
) -> None:
    """One line per layer of a stack that was not finished; the summary follows."""
    logger = get_run_logger()
    for layer in layers:
        what = " ".join(filter(None, [layer.composition_string, layer.orientation]))
        state = status[layer.layer_id]
        if state in IN_PLACE:
            logger.info("L%s %s: record %s, %s.", layer.layer_id, what, layer.id, state)
        else:
            logger.warning("L%s %s: %s: %s.", layer.layer_id, what, state, reasons[layer.layer_id])


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

    Args:
        path: The stack file (.yaml, .yml, .json or .csv), relative to the working
            directory or absolute.
        credentials: The Atomscale account: a saved `AtomscaleCredentials` block (the
            run form in the UI offers a picker; a deployment passes
            `{"$ref": {"block_document_slug": "atomscale-credentials/<name>"}}`).

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
            [existing] = find_existing_stacks(credentials, [spec])
        return _create(credentials, spec, existing, path)
    except Exception as exc:
        # Readable first: Prefect's own line ("Encountered exception ...") shows the
        # exception's repr, with a multi-line message as one line of literal \n.
        logger.error("%s", exc)
        raise


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
    reason; the table artifact `stack-folder-<folder>` has each file's status, reason
    and links to its subflow run and that run's artifacts. The run fails at the end,
    naming the files and why, if any file was invalid, in conflict, failed or not
    attempted.

    Args:
        folder: Folder of stack files (.yaml, .yml, .json, .csv), relative to the
            working directory or absolute. Subfolders are not read.
        credentials: The Atomscale account: a saved `AtomscaleCredentials` block (the
            run form in the UI offers a picker; a deployment passes
            `{"$ref": {"block_document_slug": "atomscale-credentials/<name>"}}`).
            Each file's subflow gets the same block.

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
    _publish_folder_summary(folder, results)
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
            + ". The table artifact links each file's run."
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
    return _short_reason(message)


def _grouped(problems: Sequence[StackOutcome]) -> str:
    """The files not created, with why; files that share a reason are named together.

    E.g. `a.yaml (failed: ...); b.yaml, c.yaml (not attempted: ...)`.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for outcome in problems:
        groups.setdefault((outcome.status, outcome.message), []).append(Path(outcome.path).name)
    return "; ".join(
        f"{', '.join(names)} ({status}: {_short_reason(reason, 100)})"
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
    except AtomscaleError as exc:
        reason = _unreachable(exc) or _short_reason(str(exc))
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
                vars(error).get(_SHORT) or _reason_of(path, str(error))
                if isinstance(error, BaseException)
                else state.message or "no reason given"
            )
            outcomes[path] = _problem(path, "failed", reason, name=spec.name, flow_run_id=run_id)
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
    return f"service unreachable: {_short_reason(said[1] if said else cause, 120)}"


def _publish_folder_summary(folder: str, results: list[StackOutcome]) -> None:
    """A table of the files (searchable, paged) and the same as markdown, with links.

    Prefect's UI shows a table artifact's cells as plain text, so the links to each
    file's run and its artifacts are in the markdown artifact, where they are links.
    """
    slug = "".join(c if c.isalnum() else "-" for c in Path(folder).resolve().name.lower())
    key = f"stack-folder-{slug.strip('-') or 'stacks'}"
    create_table_artifact(
        table=[
            {
                "file": Path(outcome.path).name,
                "status": outcome.status,
                "reason": _reason_cell(outcome),
                "target material": outcome.name or "\u2014",
                "sample id": outcome.sample_id if outcome.sample_id is not None else "\u2014",
                "layers": outcome.layers if outcome.layers is not None else "\u2014",
                "run id": outcome.flow_run_id or "\u2014",
            }
            for outcome in results
        ],
        key=key,
        description=f"Stack files in {folder} and what this run did with each.",
    )
    counts = {status: sum(o.status == status for o in results) for status in get_args(Status)}
    rows = [
        "| file | status | reason | run |",
        "|---|---|---|---|",
        *(
            f"| {_cell(Path(o.path).name)} | {o.status} | {_cell(_reason_cell(o))} | "
            f"{_run_links(o.flow_run_id)} |"
            for o in results
        ),
    ]
    create_markdown_artifact(
        markdown="\n\n".join(
            [
                f"### Stack files in `{folder.replace('`', '')}`",
                ", ".join(f"**{n} {status}**" for status, n in counts.items() if n)
                or "No stack files.",
                "\n".join(rows),
            ]
        ),
        key=f"{key}-runs",
        description=f"Stack files in {folder}: status, reason, and links to each file's run.",
    )


def _reason_cell(outcome: StackOutcome) -> str:
    return _short_reason(outcome.message, 120) if outcome.status in PROBLEMS else "\u2014"


def _cell(text: str) -> str:
    """Text for a markdown table cell: no line breaks, pipes and markup escaped."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", " ".join(text.split()))


def _run_links(flow_run_id: str | None) -> str:
    """Markdown links to a file's subflow run and its artifacts; the bare id without a UI."""
    if flow_run_id is None:
        return "\u2014"
    ui = PREFECT_UI_URL.value()
    if not ui:
        return f"`{flow_run_id}`"
    run = f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}"
    return f"[run]({run}) \u00b7 [artifacts]({run}?tab=Artifacts)"
