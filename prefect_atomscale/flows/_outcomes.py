"""What the stack-file flows return and raise: one `StackOutcome` per file, `StackFolderError`.

A folder run's table (`_artifacts._folder`) shows the same outcomes, one row each.
"""

from typing import Literal, get_args

from pydantic import BaseModel

__all__ = ["PROBLEMS", "STATUSES", "StackFolderError", "StackOutcome", "Status"]

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


# Every status, in the order a folder run counts them.
STATUSES: tuple[Status, ...] = get_args(Status)
# Statuses of a file that was not created.
PROBLEMS: tuple[Status, ...] = ("invalid", "conflict", "failed", "not attempted")
