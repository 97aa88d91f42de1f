"""The artifacts of a folder run: each stack file's run, target material, status and reason.

Two artifacts with the same rows. The table `stack-folder-<folder>` (searchable,
paged) starts with what a user opens: the link to the file's `stack-from-file` run and
its artifacts, then the target material's id, linked to its page in the Atomscale web
app (`web_app_url`, a guess), then the file, its status and the reason in a few words.
Prefect's default UI (3.9) renders a text cell of a table artifact as markdown, so
those cells are links there; its newer UI (under `/v2`) shows every cell as plain text,
links as written (`[run](http://...)`). The markdown artifact `stack-folder-<folder>-runs`
has the same columns as a markdown table, whose links work in both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.settings import PREFECT_UI_URL

from prefect_atomscale._artifacts._stack import table_cell

__all__ = ["FolderRow", "folder_key", "publish_folder_summary"]


class FolderRow(Protocol):
    """One file of a folder run, as the table reads it (`flows.StackOutcome` is one)."""

    @property
    def path(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def sample_id(self) -> int | None: ...
    @property
    def layers(self) -> int | None: ...
    @property
    def message(self) -> str: ...
    @property
    def flow_run_id(self) -> str | None: ...
    @property
    def url(self) -> str | None: ...


# How long a reason may be in the folder's table: the table is read at a glance; the
# whole reason is in the file's run and in the folder run's log.
REASON_CHARACTERS = 80
_DASH = "\u2014"


def folder_key(folder: str) -> str:
    """The folder table's artifact key: `stack-folder-<folder's name>`."""
    slug = "".join(c if c.isalnum() else "-" for c in Path(folder).resolve().name.lower())
    return f"stack-folder-{slug.strip('-') or 'stacks'}"


def publish_folder_summary(
    folder: str,
    results: Sequence[FolderRow],
    problems: Sequence[str],
    statuses: Sequence[str],
) -> str:
    """Publish the table and its markdown twin; return the table's key.

    `problems` are the statuses of a file that was not created; `statuses` every
    status, in the order the counts are said.
    """
    key = folder_key(folder)
    ui = str(PREFECT_UI_URL.value() or "").rstrip("/")
    create_table_artifact(
        table=[
            {
                "run": _run_links(ui, outcome.flow_run_id),
                "sample id": _sample(outcome),
                "file": table_cell(Path(outcome.path).name),
                "status": outcome.status,
                "reason": table_cell(_reason(outcome, problems)),
                "target material": table_cell(outcome.name or _DASH),
                "layers": outcome.layers if outcome.layers is not None else _DASH,
            }
            for outcome in results
        ],
        key=key,
        description=(
            f"Stack files in {folder}: each file's run, target material and status, and "
            "why a file was not created."
        ),
    )
    counts = {status: sum(o.status == status for o in results) for status in statuses}
    rows = [
        "| run | sample id | file | status | reason |",
        "|---|---|---|---|---|",
        *(
            f"| {_run_links(ui, o.flow_run_id)} | {_sample(o)} | {_md(Path(o.path).name)} | "
            f"{o.status} | {_md(_reason(o, problems))} |"
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
        description=f"Stack files in {folder}: each file's run, target material and status.",
    )
    return key


def _reason(outcome: FolderRow, problems: Sequence[str]) -> str:
    """The reason in a few words, for a file that was not created; a dash for the others."""
    if outcome.status not in problems:
        return _DASH
    text = " ".join(str(outcome.message).split())
    if len(text) <= REASON_CHARACTERS:
        return text
    return text[: REASON_CHARACTERS - 1].rsplit(" ", 1)[0] + "\u2026"


def _sample(outcome: FolderRow) -> str:
    """The target material's id, linked to its page in the Atomscale web app."""
    if outcome.sample_id is None:
        return _DASH
    return f"[{outcome.sample_id}]({outcome.url})" if outcome.url else str(outcome.sample_id)


def _md(text: str) -> str:
    """Text for a markdown table cell: no line breaks, pipes and markup escaped."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", " ".join(text.split()))


def _run_links(ui: str, flow_run_id: str | None) -> str:
    """Markdown links to a file's subflow run and its artifacts; the bare id without a UI."""
    if flow_run_id is None:
        return _DASH
    if not ui:
        return flow_run_id
    run = f"{ui}/runs/flow-run/{flow_run_id}"
    return f"[run]({run}) \u00b7 [artifacts]({run}?tab=Artifacts)"
