"""What a person sees in the Prefect UI: artifacts, run names, logs, failures, the block page."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast
from uuid import UUID

import pytest
from conftest import KEY_A
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, TaskRun
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

from atomscale_sandbox import SandboxHandle
from flows.build_stack import LayerSpec, build_stack
from prefect_atomscale import (
    AtomscaleCredentials,
    AtomscaleValidationError,
    InvalidStackFileError,
    Layer,
    TargetMaterial,
)
from prefect_atomscale._artifacts._stack import (
    _artifact_content,
    _Subject,
    artifact_key,
    collapse_repeats,
    describe_stack,
    stack_markdown,
    stack_svg,
    stack_table,
)
from prefect_atomscale._stacks import load_stack_file
from prefect_atomscale._web_app import web_app_url
from prefect_atomscale.flows import stack_from_file

ROOT = Path(__file__).resolve().parent.parent
SUPERLATTICE = ROOT / "flows" / "examples" / "bto_sto_superlattice.yaml"
SVG = "{http://www.w3.org/2000/svg}"
T = TypeVar("T")


@pytest.fixture
def block(sandbox: SandboxHandle) -> AtomscaleCredentials:
    """A saved credentials block for lab A on the sandbox, under a name of its own, loaded."""
    name = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(name)
    return cast(AtomscaleCredentials, AtomscaleCredentials.load(name))


def eventually(read: Callable[[], T], done: Callable[[T], bool]) -> T:
    """Read until `done`: task runs and logs reach the server through batched queues.

    Nothing is asserted about time; the deadline only keeps a broken run from hanging.
    """
    APILogWorker.drain_all()
    EventsWorker.drain_all()
    deadline = time.monotonic() + 60
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def task_runs_of(flow_run_id: UUID, expected: int) -> list[TaskRun]:
    def read() -> list[TaskRun]:
        with get_client(sync_client=True) as client:
            return client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
            )

    return eventually(read, lambda runs: len(runs) >= expected and all(r.state for r in runs))


def artifacts_of(flow_run_id: UUID) -> dict[str, Artifact]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.type or "": artifact for artifact in found}


def log_lines(flow_run_id: UUID, until: str) -> list[str]:
    """The flow run's log messages in order, once one containing `until` has arrived."""

    def read() -> list[str]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
            )
        return [log.message for log in sorted(logs, key=lambda log: log.timestamp)]

    return eventually(read, lambda lines: any(until in line for line in lines))


def picture(markdown: str) -> ET.Element:
    """The SVG inside a stack markdown artifact, parsed."""
    match = re.search(r"!\[[^\]]*\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:300]
    return ET.fromstring(base64.b64decode(match.group(1)))


def texts(svg: ET.Element) -> list[tuple[float, float, str]]:
    """Every text element's position and content, top to bottom, then left to right."""
    found = [
        (float(element.get("y", 0)), float(element.get("x", 0)), "".join(element.itertext()))
        for element in svg.iter(f"{SVG}text")
    ]
    return sorted(found)


def superlattice_file(folder: Path, name: str) -> Path:
    path = folder / SUPERLATTICE.name
    original = load_stack_file(SUPERLATTICE).name
    path.write_text(SUPERLATTICE.read_text().replace(original, name))
    return path


def test_a_stack_flow_run_publishes_a_layer_table_and_a_picture(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = superlattice_file(tmp_path, unique)
    state = stack_from_file(str(path), block, return_state=True)
    outcome = state.result()
    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert set(artifacts) == {"table", "markdown"}
    stem = f"{unique}-s{outcome.sample_id}"
    assert artifacts["table"].key == f"layers-{stem}"
    assert artifacts["markdown"].key == f"stack-{stem}"

    table = artifacts["table"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [row["position"] for row in rows] == list(range(1, 43))
    assert list(rows[1]) == [
        "position",
        "formula",
        "orientation",
        "space group",
        "mp id",
        "record id",
    ]
    assert rows[1] | {"record id": 0} == {
        "position": 2,
        "formula": "BaTiO3",
        "orientation": "(001)",
        "space group": "P4mm",
        "mp id": "mp-5020",
        "record id": 0,
    }
    stored = sandbox.layer_rows(organisation="lab-a", sample_id=outcome.sample_id)
    assert {row["record id"] for row in rows} == {row["id"] for row in stored}

    markdown = str(artifacts["markdown"].data)
    assert markdown.startswith(f"### {unique}\n")
    assert f"Target material **{outcome.sample_id}** on **SrTiO3** · 42 layers" in markdown
    assert f"from `{path}`" in markdown
    # The record in the Atomscale web app (its address a guess from the base URL): in the
    # picture's caption, the table's description, the outcome and the run's state message.
    url = f"{sandbox.url}/target-materials/{outcome.sample_id}"
    assert outcome.url == url
    assert f" · [Open in Atomscale]({url})" in markdown.split("\n\n")[1]
    assert str(artifacts["table"].description).endswith(f" [Open in Atomscale]({url})")
    assert state.message == (
        f"Target material {outcome.sample_id} ({unique!r}): 42 created now. "
        f"Open in Atomscale: {url}"
    )
    lines = [text for _, _, text in texts(picture(markdown))]
    # Top to bottom: the top electrode, one period marked x 20, the bottom one, the substrate.
    assert lines[:4] == ["L42", "SrRuO3", "(001)", "Pnma"]
    assert "\u00d7 20" in lines and "L2\u2013L41 (40 layers)" in lines
    assert lines.index("\u00d7 20") < lines.index("L1") < lines.index("SrTiO3 substrate")
    assert lines.count("BaTiO3") == 1  # one period drawn, not twenty
    assert "L2-L41 20 \u00d7 (BaTiO3 (001) / SrTiO3 (001))" in markdown
    for artifact in artifacts.values():
        assert KEY_A not in json.dumps(artifact.model_dump(mode="json"))


def test_the_example_flow_publishes_the_same_artifacts(
    credentials: AtomscaleCredentials, unique: str
) -> None:
    state = build_stack(
        credentials,
        sample_name=unique,
        substrate="Al2O3",
        layers=[LayerSpec(composition="GaN", orientation="0001")],
        return_state=True,
    )
    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert sorted(artifact.key or "" for artifact in artifacts.values()) == [
        f"layers-{unique}-s{state.result().target_material.sample_id}",
        f"stack-{unique}-s{state.result().target_material.sample_id}",
    ]


def test_task_runs_have_readable_names_and_the_flow_logs_each_layer(
    tmp_path: Path, block: AtomscaleCredentials, unique: str
) -> None:
    state = stack_from_file(str(superlattice_file(tmp_path, unique)), block, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    sample_id = state.result().sample_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    task_runs = task_runs_of(flow_run_id, 3)
    # Named after its file, then after its target material once it exists; tagged too.
    assert flow_run.name == f"stack-from-file-bto_sto_superlattice.yaml-s{sample_id}"
    assert f"target-material-{sample_id}" in flow_run.tags
    names = {task_run.name for task_run in task_runs}
    # A new stack is sent with its target material in one request, then read back by
    # one create_layers task: three task runs, whatever the stack's length.
    assert f"create-layers-s{sample_id}-42-layers" in names
    assert f"create-target-material-{unique}" in names
    assert "find-existing-stacks" in names

    lines = log_lines(flow_run_id, until="Finished in state Completed(")
    per_layer = [line for line in lines if re.match(r"L\d+ ", line)]
    assert len(per_layer) == 42
    assert per_layer[1].startswith("L2 BaTiO3 001: record ")
    assert per_layer[1].endswith("(space group P4mm, mp-5020), created.")
    # One story, told once: the material is created with its layers, which
    # create_layers reads back; no line says they were already there, none says it twice.
    read_back = (
        f"Read back the 42-layer stack of target material {sample_id}: its 42 layers were "
        "created with the target material; nothing to write."
    )
    assert read_back in lines, lines
    told = [line for line in lines if not line.startswith("Finished in state")]
    assert not [line for line in told if "already there" in line or "created now" in line]


def test_a_new_stack_refused_whole_publishes_its_stack_and_says_why_once(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    # Fine locally, but longer than the service stores: refused with a 422, not retried.
    long_symbol = "P4mm (tetragonal, ferroelectric phase)"
    path = tmp_path / "refused.yaml"
    path.write_text(
        f"name: {unique}\nsubstrate: SrTiO3\nlayers:\n"
        "  - {composition: SrRuO3, orientation: '001'}\n"
        f"  - {{composition: BaTiO3, orientation: '001', space_group: '{long_symbol}'}}\n"
        "  - {composition: SrRuO3, orientation: '001'}\n"
    )
    state = stack_from_file(str(path), block, return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    task_runs = task_runs_of(flow_run_id, 2)
    [failed] = [run for run in task_runs if run.state and run.state.is_failed()]
    assert failed.name == f"create-target-material-{unique}"
    # A new stack is written in one request, all or nothing: nothing is left behind.
    assert not [
        m for m in sandbox.target_materials(organisation="lab-a") if m["sample_name"] == unique
    ]

    reason = "space_group: String should have at most 32 characters (422)"
    summary = (
        f"{path}: target material {unique!r} not created: the service refused L2 (BaTiO3 001): "
        f"{reason}; none of its 3 layers was written. Fix L2 in {path} and run again."
    )
    message = state.message or ""
    assert message.endswith(summary), message
    assert message.count("at most 32 characters") == 1  # the reason, once
    assert "layers.1" not in message  # the service counts from 0; the message from L1
    with pytest.raises(AtomscaleValidationError) as caught:
        state.result()
    assert str(caught.value) == summary and caught.value.status_code == 422

    # The table and the picture of the stack as the file asks for it, not created.
    artifacts = artifacts_of(flow_run_id)
    assert artifacts["table"].key == f"layers-{unique}-not-created"
    assert artifacts["markdown"].key == f"stack-{unique}-not-created"
    rows = cast(list[dict[str, Any]], json.loads(cast(str, artifacts["table"].data)))
    one_request = "not written: the stack is one request, refused for L2"
    assert [(row["status"], row["reason"]) for row in rows] == [
        ("not attempted", one_request),
        ("failed", reason),
        ("not attempted", one_request),
    ]
    assert rows[1]["space group"] == long_symbol and rows[1]["record id"] == "—"
    assert str(artifacts["table"].description).startswith(
        f"Layer table of {unique} (not created) on SrTiO3: 3 layers (1 failed, 2 not attempted)"
    )
    markdown = cast(str, artifacts["markdown"].data)
    assert markdown.startswith(f"### {unique} (not created)\n")
    assert "**Not created**, on **SrTiO3** · 3 layers in the file" in markdown
    assert "**0 in place**, **1 failed**, **2 not attempted**" in markdown
    drawn = [text for _, _, text in texts(picture(markdown))]
    assert drawn.count("\u2717 failed") == 1

    # The run's first ERROR line, its task runs' lines included, is the summary; the
    # task's own "Finished in state Failed" is a warning before it.
    logs = run_logs(flow_run_id, until="Finished in state Failed")
    errors = [message for level, _, message in logs if level >= 40]
    assert errors[0] == summary, errors
    assert "Encountered exception" in errors[1]
    task_lines = [(level, message) for level, task, message in logs if task is not None]
    assert any(level == 30 and m.startswith("Finished in state Failed") for level, m in task_lines)
    per_layer = [message for level, task, message in logs if level == 30 and task is None]
    assert per_layer == [
        f"L1 SrRuO3 001: not attempted: {one_request}.",
        f"L2 BaTiO3 001: failed: {reason}.",
        f"L3 SrRuO3 001: not attempted: {one_request}.",
    ]


def test_the_credentials_block_page_documents_every_field_and_masks_the_key(
    sandbox: SandboxHandle,
) -> None:
    name = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(name)
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("atomscale-credentials")
        document = client.read_block_document_by_name(
            name, block_type_slug="atomscale-credentials", include_secrets=False
        )
    assert block_type.name == "Atomscale Credentials"
    assert block_type.description and "Atomscale API" in block_type.description
    assert block_type.code_example and "AtomscaleCredentials.load(" in block_type.code_example
    assert str(block_type.documentation_url).startswith("https://")
    assert document.block_schema is not None
    properties: dict[str, Any] = document.block_schema.fields["properties"]
    assert set(properties) >= {"api_key", "base_url", "timeout", "connect_timeout"}
    for field, schema in properties.items():
        assert schema.get("description", "").endswith("."), field
    assert document.data["api_key"] == "********"
    assert KEY_A not in json.dumps(document.model_dump(mode="json"), default=str)


# --------------------------------------------------------------------------- the pictures


def layers(*formulas: str, orientation: str = "001") -> list[Layer]:
    return [
        Layer(id=100 + i, layer_id=i, sample_id=4, composition_string=f, orientation=orientation)
        for i, f in enumerate(formulas, start=1)
    ]


@pytest.mark.parametrize(
    ("keys", "segments"),
    [
        ([], []),
        (["A"], [(0, 1, 1)]),
        (["A", "B", "C"], [(0, 1, 1), (1, 1, 1), (2, 1, 1)]),
        (["S", *["B", "T"] * 20, "S"], [(0, 1, 1), (1, 2, 20), (41, 1, 1)]),
        # A lone layer before a superlattice that starts with the same layer.
        (["T", *["T", "B"] * 10], [(0, 1, 1), (1, 2, 10)]),
        (["A", "A", "A", "B"], [(0, 1, 3), (3, 1, 1)]),
        (["A", "B", "C"] * 3 + ["D"], [(0, 3, 3), (9, 1, 1)]),
    ],
)
def test_repeats_collapse_to_the_fewest_rows(
    keys: list[str], segments: list[tuple[int, int, int]]
) -> None:
    assert collapse_repeats(keys) == segments


def test_a_written_out_superlattice_is_drawn_collapsed_too() -> None:
    flat = layers("SrRuO3", *["BaTiO3", "SrTiO3"] * 5)
    assert describe_stack("SrTiO3", flat) == (
        "SrTiO3 substrate → L1 SrRuO3 (001) → L2-L11 5 \u00d7 (BaTiO3 (001) / SrTiO3 (001))"
    )
    lines = [text for _, _, text in texts(ET.fromstring(stack_svg("SrTiO3", flat)))]
    assert lines.count("BaTiO3") == 1 and "\u00d7 5" in lines
    assert lines[-2:] == [
        "SrTiO3 substrate",
        "growth direction ↑ · L1 is grown first, on the substrate",
    ]


def test_counts_and_screw_axes_are_subscripts() -> None:
    layer = Layer(
        id=1, layer_id=1, sample_id=4, composition_string="Al0.25Ga0.75N", space_group="P6_3mc"
    )
    svg = ET.fromstring(stack_svg("Al2O3", [layer]))
    lowered = [
        span.text
        for span in svg.iter(f"{SVG}tspan")
        if span.get("font-size") and float(span.get("dy", 0)) > 0
    ]
    assert lowered == ["0.25", "0.75", "3", "2", "3"]


def test_names_cannot_inject_markup() -> None:
    material = TargetMaterial(sample_id=7, sample_name="<img src=x> *bold* [x](y)", substrate="MgO")
    markdown = stack_markdown(material, layers("TiO2"))
    assert markdown.startswith(r"### \<img src=x\> \*bold\* \[x\](y)")
    ET.fromstring(stack_svg("<b>", layers("TiO2")))  # still well-formed XML


def test_artifact_keys_follow_prefects_rules() -> None:
    material = TargetMaterial(
        sample_id=42,
        sample_name="BTO/STO superlattice x20 with SRO electrodes (MBE-2024-031)",
        substrate="SrTiO3",
    )
    key = artifact_key(material)
    assert key == "bto-sto-superlattice-x20-with-sro-s42"
    assert re.fullmatch(r"[a-z0-9-]+", key)
    nameless = TargetMaterial(sample_id=3, sample_name="Ωμ", substrate="x")
    assert artifact_key(nameless) == "stack-s3"


def test_the_table_lists_layers_bottom_first_with_dashes_for_unknowns() -> None:
    rows = stack_table(list(reversed(layers("SrRuO3", "BaTiO3"))))
    assert rows[0] == {
        "position": 1,
        "formula": "SrRuO3",
        "orientation": "(001)",
        "space group": "—",
        "mp id": "—",
        "record id": 101,
    }


# --------------------------------------------------------------------------- failed stacks

LONG_SPACE_GROUP = "P4mm" * 10  # accepted here, refused by the service (at most 32 characters)


def superlattice_with_bad_layers(folder: Path, name: str, bad: tuple[int, ...]) -> Path:
    """The 42-layer superlattice written out, with a space group the service refuses at `bad`."""
    formulas = ["SrRuO3", *["BaTiO3", "SrTiO3"] * 20, "SrRuO3"]
    lines = [f"name: {name}", "substrate: SrTiO3", "layers:"]
    for position, formula in enumerate(formulas, start=1):
        extra = f", space_group: {LONG_SPACE_GROUP}" if position in bad else ""
        lines.append(f"  - {{composition: {formula}, orientation: '001'{extra}}}")
    path = folder / "sl.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_partial(sandbox: SandboxHandle, name: str) -> int:
    """The target material of `superlattice_with_bad_layers` with only L1 and L2, as ours."""
    from test_stack_files import create_directly

    first_two = [
        {"composition_string": formula, "orientation": "001"} for formula in ("SrRuO3", "BaTiO3")
    ]
    return create_directly(sandbox, name, "SrTiO3", first_two)


def test_a_partly_failed_stack_says_what_happened_to_every_layer(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = superlattice_with_bad_layers(tmp_path, unique, bad=(4, 30))
    sample_id = make_partial(sandbox, unique)
    state = stack_from_file(str(path), block, return_state=True)
    assert state.is_failed()
    reason = "space_group: String should have at most 32 characters (422)"
    summary = (
        f"{path}: 2 of 42 layers failed (L4, L30: {reason}); "
        f"the other 40 are in place in target material {sample_id}. "
        f"Fix L4, L30 in {path} and run again; the 40 layers in place are not rewritten."
    )
    assert state.message is not None and state.message.endswith(summary), state.message
    # Still the service's error type, with its attributes: a caller's except clauses work.
    with pytest.raises(AtomscaleValidationError) as caught:
        state.result()
    assert str(caught.value) == summary and caught.value.status_code == 422
    assert sandbox.count_layers(sample_id=sample_id) == 40

    flow_run_id = state.state_details.flow_run_id
    artifacts = artifacts_of(flow_run_id)
    assert {"table", "markdown"} <= set(artifacts)
    rows = cast(list[dict[str, Any]], json.loads(cast(str, artifacts["table"].data)))
    status = {row["position"]: row["status"] for row in rows}
    assert status == {
        **dict.fromkeys(range(1, 43), "created"),
        1: "already there",
        2: "already there",
        4: "failed",
        30: "failed",
    }
    assert rows[3]["record id"] == "—"
    reasons = {row["position"]: row["reason"] for row in rows}
    assert reasons == {**dict.fromkeys(range(1, 43), "—"), 4: reason, 30: reason}
    assert "(2 failed)" in (artifacts["table"].description or "")
    markdown = cast(str, artifacts["markdown"].data)
    assert "**40 in place**, **2 failed**" in markdown
    drawn = [text for _, _, text in texts(picture(markdown))]
    assert drawn.count("\u2717 failed") == 2
    assert "failed: not written, see the run\u2019s log" in drawn  # the legend
    url = web_app_url(block.resolve().base_url, sample_id)
    assert f"[Open in Atomscale]({url})" in markdown

    # The first ERROR line of the run, its task runs' included, is the summary, readable,
    # before Prefect's "Encountered exception" line with the repr.
    logs = run_logs(flow_run_id, until="Finished in state Failed")
    errors = [message for level, _, message in logs if level >= 40]
    assert errors[0] == summary, errors
    assert "Encountered exception" in errors[1]
    assert len(errors) == 2  # create_layers' own failure lines are warnings


def test_the_first_error_line_of_a_run_with_a_bad_file_is_the_readable_message(
    tmp_path: Path, block: AtomscaleCredentials
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsubstrate: y\nlayers:\n  - composition: Xx2O3\n  - composition: Q\n")
    state = stack_from_file(str(path), block, return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    errors = error_lines(flow_run_id, until="Finished in state Failed")
    first = errors[0]
    assert first.startswith(f"{path} has 2 problems") and "\n" in first, first
    assert "\\n" not in first
    assert "Encountered exception" in errors[1] and "\\n" in errors[1]
    # No stack to draw: one markdown artifact lists the problems, one per line.
    artifact = artifacts_of(flow_run_id)["markdown"]
    assert artifact.key == "stack-file-bad-yaml-invalid"
    lines = cast(str, artifact.data).splitlines()
    assert lines[0] == "### bad.yaml cannot be used"
    assert [line for line in lines if line.startswith("- ")] == [
        f"- {problem.describe().splitlines()[0]}" for problem in caught_problems(path)
    ]


def caught_problems(path: Path) -> list[Any]:
    """The problems `load_stack_file` finds in `path`."""
    with pytest.raises(InvalidStackFileError) as caught:
        load_stack_file(path)
    return list(caught.value.problems)


def run_logs(flow_run_id: UUID, until: str) -> list[tuple[int, UUID | None, str]]:
    """Every log line of a flow run, its task runs' included, as the UI's log shows them."""

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
            )

    logs = eventually(read, lambda found: any(until in log.message for log in found))
    return [
        (log.level, log.task_run_id, log.message)
        for log in sorted(logs, key=lambda log: log.timestamp)
    ]


def error_lines(flow_run_id: UUID, until: str) -> list[str]:
    """The flow run's own ERROR messages in order (its task runs' left out)."""

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
            )

    logs = eventually(read, lambda found: any(until in log.message for log in found))
    return [
        log.message
        for log in sorted(logs, key=lambda log: log.timestamp)
        if log.level >= 40 and log.task_run_id is None
    ]


def test_the_table_and_picture_show_each_layers_status() -> None:
    stack = layers("SrRuO3", "BaTiO3", "SrTiO3", "BaTiO3", "SrTiO3")
    status = {1: "already there", 2: "created", 3: "failed", 4: "not attempted", 5: "not attempted"}
    rows = stack_table(stack, status)
    assert [row["status"] for row in rows] == [status[p] for p in range(1, 6)]
    assert [row["record id"] for row in rows] == [101, 102, "—", "—", "—"]
    assert "status" not in stack_table(stack)[0]  # unchanged without a status
    assert "reason" not in rows[0]  # and without reasons
    # A reason per layer not in place, after the status; the default UI renders a text
    # cell as markdown, so what would change the text is escaped.
    reasons = {3: "space_group: at most 32 characters (422)", 4: "*not* sent: <L3>"}
    with_reasons = stack_table(stack, status, reasons)
    assert list(with_reasons[0])[-2:] == ["status", "reason"]
    assert [row["reason"] for row in with_reasons] == [
        "—",
        "—",
        "space_group: at most 32 characters (422)",
        "\\*not\\* sent: \\<L3\\>",
        "—",
    ]
    svg = ET.fromstring(stack_svg("SrTiO3", stack, status))
    drawn = [text for _, _, text in texts(svg)]
    assert drawn.count("\u2717 failed") == 1 and drawn.count("not attempted") == 3  # 2 + legend
    fills = {rect.get("fill") for rect in svg.iter(f"{SVG}rect")}
    assert "url(#failed)" in fills
    # Without a status nothing is marked, and there is no legend.
    plain = [text for _, _, text in texts(ET.fromstring(stack_svg("SrTiO3", stack)))]
    assert not any("failed" in text or "not attempted" in text for text in plain)


def test_every_formula_in_a_picture_has_a_colour_of_its_own() -> None:
    formulas = [f"Ba{n}TiO3" for n in range(2, 26)]  # 24 formulas and the substrate: 25
    svg = ET.fromstring(stack_svg("SrTiO3", layers(*formulas)))
    bands = [
        rect.get("fill")
        for rect in svg.iter(f"{SVG}rect")
        if rect.get("height") in ("32", "48") and (rect.get("fill") or "").startswith("#")
    ]
    assert len(bands) == 25 and len(set(bands)) == 25, bands
    # The same formula keeps its colour within the picture.
    again = ET.fromstring(stack_svg("SrTiO3", layers("GaN", "AlN", "GaN")))
    fills = [r.get("fill") for r in again.iter(f"{SVG}rect") if r.get("height") == "32"]
    assert fills[0] == fills[2] != fills[1]


def test_one_layer_is_one_layer_not_one_layers() -> None:
    material = TargetMaterial(sample_id=7, sample_name="TiO2 film", substrate="MgO")
    _, table, markdown = _artifact_content(_Subject.of(material), layers("TiO2"), None, None, None)
    assert "TiO2 film (target material 7) on MgO: 1 layer, L1" in table["description"]
    assert " · 1 layer" in markdown["markdown"] and "1 layers" not in markdown["markdown"]


def test_a_material_without_a_name_or_substrate_is_still_drawn_and_said_once() -> None:
    markdown = stack_markdown(TargetMaterial(sample_id=6), layers("TiO2"))
    assert markdown.startswith("### target material 6\n")
    assert "Target material **6** on **an unnamed substrate**" in markdown
    assert "substrate substrate" not in markdown
    drawn = [text for _, _, text in texts(picture(markdown))]
    assert "unnamed substrate" in drawn and "unnamed substrate substrate" not in drawn
    assert describe_stack("unnamed substrate", layers("TiO2")).startswith("unnamed substrate →")


@pytest.mark.parametrize(
    ("base_url", "page"),
    [
        ("https://api.atomscale.ai", "https://app.atomscale.ai/target-materials/42"),
        ("https://api.atomscale.ai/", "https://app.atomscale.ai/target-materials/42"),
        # Another service: the same rule, api. -> app., the path dropped.
        (
            "https://API.staging.example.org/v1/",
            "https://app.staging.example.org/target-materials/42",
        ),
        # No api. host: the web app is guessed to be where the API is.
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/target-materials/42"),
        ("http://[::1]:8000", "http://[::1]:8000/target-materials/42"),
        # A user and password in the base URL never reach a link.
        ("https://lab:s3cret@proxy.lab.org:8443", "https://proxy.lab.org:8443/target-materials/42"),
    ],
)
def test_the_web_apps_address_is_derived_from_the_base_url(base_url: str, page: str) -> None:
    assert web_app_url(base_url, 42) == page
