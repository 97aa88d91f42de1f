"""Folder runs that explain themselves: reasons and links in the parent, and a fast end
to a run when the service is unreachable."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest
from conftest import KEY_A
from helpers import LAYERS, TARGET_MATERIALS, only_material, requests_to
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_UI_URL, temporary_settings
from test_artifacts import LONG_SPACE_GROUP, eventually

from atomscale_sandbox import SandboxHandle, run_sandbox
from prefect_atomscale import AtomscaleCredentials
from prefect_atomscale._retries import DEFAULT_RETRIES
from prefect_atomscale.flows import stack_from_file, stacks_from_folder

UI = "http://prefect.example:4200"


@pytest.fixture
def block(sandbox: SandboxHandle) -> AtomscaleCredentials:
    name = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(name)
    return cast(AtomscaleCredentials, AtomscaleCredentials.load(name))


def stack(folder: Path, file_name: str, name: str, *layers: str, bad: bool = False) -> Path:
    """A stack file; with `bad`, its last layer has a space group the service refuses."""
    lines = [f"name: {name}", "substrate: SrTiO3", "layers:"]
    for index, formula in enumerate(layers, start=1):
        extra = f", space_group: {LONG_SPACE_GROUP}" if bad and index == len(layers) else ""
        lines.append(f"  - {{composition: {formula}, orientation: '001'{extra}}}")
    path = folder / file_name
    path.write_text("\n".join(lines) + "\n")
    return path


def subflows_of(flow_run_id: UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )


def folder_artifacts(flow_run_id: UUID) -> tuple[list[dict[str, Any]], str]:
    """The folder run's table (rows) and its markdown twin with the links."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key={"like_": "stack-folder-"},
            )
        )
    by_type = {artifact.type: artifact for artifact in found}
    rows = cast(list[dict[str, Any]], json.loads(cast(str, by_type["table"].data)))
    return rows, cast(str, by_type["markdown"].data)


def folder_table(flow_run_id: UUID) -> list[dict[str, Any]]:
    return folder_artifacts(flow_run_id)[0]


def parent_errors(flow_run_id: UUID) -> list[str]:
    """ERROR lines of the folder run itself, in order (not its subflows' or tasks')."""

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
            )

    logs = eventually(read, lambda found: any("Finished in state" in x.message for x in found))
    return [
        log.message
        for log in sorted(logs, key=lambda log: log.timestamp)
        if log.level >= 40 and log.task_run_id is None
    ]


def test_a_failed_folder_run_says_why_for_each_file_and_links_its_run(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    folder = tmp_path / "stacks"
    folder.mkdir()
    stack(folder, "a_good.yaml", f"{unique}-good", "SrRuO3", "BaTiO3")
    stack(folder, "b_bad_layer.yaml", f"{unique}-bad", "SrRuO3", "BaTiO3", bad=True)
    (folder / "c_typo.yaml").write_text("name: x\nsubstrate: y\nlayers:\n  - composition: Q\n")
    with temporary_settings(updates={PREFECT_UI_URL: UI}):
        state = stacks_from_folder(str(folder), block, return_state=True)
    assert state.is_failed()
    refused = "L2 refused: space_group: String should have at most 32 characters (422)"
    message = state.message or ""
    assert "2 of 3 stack files" in message
    assert f"b_bad_layer.yaml (failed: {refused})" in message
    assert "c_typo.yaml (invalid: layer L1 (line 4), field 'composition': invalid" in message
    assert message.endswith(". The table artifact stack-folder-stacks links each file's run.")

    parent = cast(UUID, state.state_details.flow_run_id)
    errors = parent_errors(parent)
    # One readable line per file that was not created, in the folder run's own log.
    assert errors[0].startswith("c_typo.yaml: invalid: layer L1 (line 4)"), errors
    assert errors[1] == f"b_bad_layer.yaml: failed: {refused}", errors
    assert errors[2].startswith("2 of 3 stack files"), errors

    [good_run, bad_run] = sorted(subflows_of(parent), key=lambda run: run.name)
    table, markdown = folder_artifacts(parent)
    # What a user opens first, first: the file's run, then its target material.
    assert list(table[0]) == [
        "run",
        "sample id",
        "file",
        "status",
        "reason",
        "target material",
        "layers",
    ]
    rows = {row["file"]: row for row in table}
    good = rows["a_good.yaml"]
    assert (good["status"], good["reason"], good["layers"]) == ("created", "—", 2)
    sample_id = only_material(sandbox, f"{unique}-good")
    atomscale = f"{sandbox.url}/target-materials/{sample_id}"  # the guessed web app page
    assert good["sample id"] == f"[{sample_id}]({atomscale})"
    assert rows["b_bad_layer.yaml"]["status"] == "failed"
    assert rows["b_bad_layer.yaml"]["sample id"] == "—"  # not created
    assert rows["b_bad_layer.yaml"]["reason"] == refused
    assert rows["c_typo.yaml"]["reason"].startswith("layer L1 (line 4), field 'composition'")
    assert rows["c_typo.yaml"]["run"] == "—"  # no subflow: nothing sent
    # A short reason: the table is read at a glance; the whole one is in the log.
    assert all(len(row["reason"]) <= 80 for row in table)
    # Prefect's default UI renders a text cell as markdown: the cells are links there,
    # and in the markdown twin, whose rows are the same.
    for file, run in (("a_good.yaml", good_run), ("b_bad_layer.yaml", bad_run)):
        link = f"{UI}/runs/flow-run/{run.id}"
        assert rows[file]["run"] == f"[run]({link}) · [artifacts]({link}?tab=Artifacts)"
        line = next(line for line in markdown.splitlines() if f"| {file[0]}" in line)
        assert line.startswith(f"| {rows[file]['run']} | {rows[file]['sample id']} | "), line
    assert "| — | — | c\\_typo.yaml | invalid | layer L1 (line 4), field 'composition'" in markdown
    assert "**1 created**, **1 invalid**, **1 failed**" in markdown


def test_without_a_ui_url_the_table_shows_the_run_id(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    stack(tmp_path, "one.yaml", unique, "TiO2")
    # No UI known (PREFECT_UI_URL empty, as when Prefect cannot derive one).
    with temporary_settings(updates={PREFECT_UI_URL: ""}):
        state = stacks_from_folder(str(tmp_path), block, return_state=True)
    assert state.is_completed()
    parent = cast(UUID, state.state_details.flow_run_id)
    [run] = subflows_of(parent)
    [row], markdown = folder_artifacts(parent)
    assert row["run"] == str(run.id)
    sample_id = only_material(sandbox, unique)
    assert markdown.splitlines()[-1] == (
        f"| {run.id} | [{sample_id}]({sandbox.url}/target-materials/{sample_id}) | one.yaml | "
        "created | — |"
    )


def test_subflows_use_the_folder_runs_listing(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    # Alone, a stack-from-file run lists the account once to find out what exists; its
    # tasks then read what they need (the same whether run alone or by a folder run).
    alone = stack(tmp_path, "alone.yaml", f"{unique}-alone", "SrRuO3", "BaTiO3")
    sandbox.reset_stats()
    stack_from_file(str(alone), block)
    per_file = requests_to(sandbox, "GET", TARGET_MATERIALS)
    alone.unlink()

    folder = tmp_path / "stacks"
    folder.mkdir()
    for index in range(3):
        stack(folder, f"s{index}.yaml", f"{unique}-{index}", "SrRuO3", "BaTiO3")
    sandbox.reset_stats()
    outcomes = stacks_from_folder(str(folder), block)
    assert [outcome.status for outcome in outcomes] == ["created"] * 3
    assert all(outcome.flow_run_id for outcome in outcomes)
    # The folder's one listing, then each subflow without its own listing.
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 1 + 3 * (per_file - 1)
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 3


def test_an_outage_in_a_subflow_ends_the_run_without_running_the_other_files(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    for index in range(4):
        stack(tmp_path, f"s{index}.yaml", f"{unique}-{index}", "SrRuO3", "BaTiO3")
    sandbox.faults.set(rate=1.0, kinds={"503"})  # every write refused, the listing works
    sandbox.reset_stats()
    state = stacks_from_folder(str(tmp_path), block, return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert "4 of 4 stack files" in message
    assert "s0.yaml (failed: " in message
    assert "s1.yaml, s2.yaml, s3.yaml (not attempted: service unreachable: " in message
    # The first file's create was tried with its retries; the others were never run.
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == DEFAULT_RETRIES + 1
    assert requests_to(sandbox, "POST", LAYERS) == 0
    parent = cast(UUID, state.state_details.flow_run_id)
    assert len(subflows_of(parent)) == 1
    rows = {row["file"]: row for row in folder_table(parent)}
    assert [rows[f"s{i}.yaml"]["status"] for i in range(4)] == ["failed"] + ["not attempted"] * 3
    assert rows["s3.yaml"]["reason"].startswith("service unreachable: ")


@pytest.mark.integration
def test_a_service_that_is_down_fails_the_run_after_the_listing_alone(
    tmp_path: Path, unique: str
) -> None:
    with run_sandbox() as stopped:
        url, key = stopped.url, stopped.api_key
    name = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=key, base_url=url, timeout=2.0).save(name)
    credentials = cast(AtomscaleCredentials, AtomscaleCredentials.load(name))
    for index in range(3):
        stack(tmp_path, f"s{index}.yaml", f"{unique}-{index}", "TiO2")
    state = stacks_from_folder(str(tmp_path), credentials, return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert "3 of 3 stack files" in message
    assert "s0.yaml, s1.yaml, s2.yaml (not attempted: service unreachable: Could not " in message
    assert subflows_of(cast(UUID, state.state_details.flow_run_id)) == []
