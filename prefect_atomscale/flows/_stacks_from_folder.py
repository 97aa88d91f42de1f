"""The `stacks-from-folder` flow: create every stack file of a folder not created yet.

The story of a run, in order: read every file (invalid ones, and files that name the
same target material, are reported and left out); list the account once for all of
them (`find_existing_stacks`); skip the files already created, report those in
conflict, and run a `stack-from-file` subflow for each of the others, handing it this
run's listing (`_parent_listing`). Once a transient fault outlived its retries, the
files left are not attempted. The run publishes the folder's table (`_artifacts`) and
fails at the end, naming the files not created and why.
"""

# No `from __future__ import annotations`: Prefect checks a flow's parameters with a
# model of its signature, and a served run could not resolve the string "Credentials".
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from prefect_atomscale._artifacts import publish_folder_summary
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleError
from prefect_atomscale._stacks import (
    STACK_FILE_SUFFIXES,
    InvalidStackFileError,
    StackConflictError,
    StackSpec,
    load_stack_file,
)
from prefect_atomscale._web_app import web_app_url
from prefect_atomscale.flows._block_parameter import Credentials
from prefect_atomscale.flows._outcomes import (
    PROBLEMS,
    STATUSES,
    StackFolderError,
    StackOutcome,
    Status,
)
from prefect_atomscale.flows._parent_listing import parent_listing
from prefect_atomscale.flows._run_names import folder_run_name
from prefect_atomscale.flows._stack_failures import clipped, said_briefly, unreachable
from prefect_atomscale.flows._stack_from_file import find_existing_stacks, stack_from_file

__all__ = ["stack_files", "stacks_from_folder"]


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


@flow(name="stacks-from-folder", flow_run_name=folder_run_name)
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
    key = publish_folder_summary(folder, results, PROBLEMS, STATUSES)
    problems = [outcome for outcome in results if outcome.status in PROBLEMS]
    counts = {status: sum(o.status == status for o in results) for status in STATUSES}
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


def _problem(path: str, status: Status, reason: str, **fields: Any) -> StackOutcome:
    """A file that was not created: its reason logged in this run, one ERROR line."""
    get_run_logger().error("%s: %s: %s", Path(path).name, status, reason)
    return StackOutcome(path=path, status=status, message=reason, **fields)


def _invalid_reason(exc: InvalidStackFileError) -> str:
    first = exc.problems[0].describe().splitlines()[0] if exc.problems else str(exc)
    more = len(exc.problems) - 1
    return first + (f" (and {more} more {'problem' if more == 1 else 'problems'})" if more else "")


def _grouped(problems: Sequence[StackOutcome]) -> str:
    """The files not created, with why; files that share a reason are named together.

    E.g. `a.yaml (failed: ...); b.yaml, c.yaml (not attempted: ...)`.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for outcome in problems:
        groups.setdefault((outcome.status, outcome.message), []).append(Path(outcome.path).name)
    return "; ".join(
        f"{', '.join(names)} ({status}: {clipped(reason, 100)})"
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
        reason = unreachable(exc) or said_briefly(exc)
        status: Status = "not attempted"
        return {
            path: _problem(path, status, reason, name=spec.name) for path, spec in specs.items()
        }
    service_unreachable: str | None = None
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
            conflict = StackConflictError(path, spec.name, existing.problems, existing.differences)
            outcomes[path] = _problem(path, "conflict", clipped(conflict.reason), name=spec.name)
        elif service_unreachable is not None:
            outcomes[path] = _problem(path, "not attempted", service_unreachable, name=spec.name)
        else:
            with parent_listing(path, spec, existing):  # the subflow does not list again
                state = stack_from_file(path, credentials, return_state=True)
            run_id = str(state.state_details.flow_run_id or "") or None
            if state.is_completed():
                outcomes[path] = state.result().model_copy(update={"flow_run_id": run_id})
                continue
            error = state.result(raise_on_failure=False)
            if isinstance(error, InvalidStackFileError):  # the file changed since it was read
                reason, sample_id = _invalid_reason(error), None
            elif isinstance(error, AtomscaleError):
                reason = error.stack_summary or said_briefly(error)
                # A stack that failed halfway has a target material: the table links it.
                sample_id = error.sample_id
                service_unreachable = unreachable(error)
            else:  # not the service's: a bug, or a crash
                reason = clipped(str(error) if isinstance(error, BaseException) else "")
                reason = reason or state.message or "no reason given"
                sample_id = None
            outcomes[path] = _problem(
                path,
                "failed",
                reason,
                name=spec.name,
                flow_run_id=run_id,
                sample_id=sample_id,
                url=web_app_url(base_url, sample_id) if sample_id is not None else None,
            )
    return outcomes
