"""Stack files: the format, its checks, and the flows that create what files describe."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from conftest import KEY_A, KEY_A2
from helpers import LAYERS, TARGET_MATERIALS, requests_to
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.events.worker import EventsWorker
from test_artifacts import LONG_SPACE_GROUP, artifacts_of, eventually

from atomscale_sandbox import SandboxHandle, run_sandbox
from prefect_atomscale import AtomscaleCredentials, AtomscaleValidationError, TargetMaterialRow
from prefect_atomscale._payloads import OWNER_KEY, owner_token
from prefect_atomscale._stacks import (
    InvalidStackFileError,
    LayerSpec,
    RepeatBlock,
    StackConflictError,
    StackSpec,
    compare_with_existing,
    load_stack_file,
    parse_stack,
)
from prefect_atomscale.flows import is_made_up_run_name, stack_from_file, stacks_from_folder
from prefect_atomscale.flows._stacks_from_folder import stack_files

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "flows" / "examples"
SUPERLATTICE = EXAMPLES / "bto_sto_superlattice.yaml"
HEMT = EXAMPLES / "gan_hemt_on_sapphire.json"
FILM = EXAMPLES / "bto_film_on_sto.csv"


def copy_as(example: Path, folder: Path, name: str) -> Path:
    """A copy of an example whose target material is called `name` instead."""
    original = load_stack_file(example).name
    target = folder / example.name
    target.write_text(example.read_text().replace(original, name))
    return target


def write(folder: Path, file_name: str, text: str) -> Path:
    path = folder / file_name
    path.write_text(text)
    return path


def problems_of(path: Path) -> InvalidStackFileError:
    with pytest.raises(InvalidStackFileError) as caught:
        load_stack_file(path)
    return caught.value


@pytest.fixture
def block(sandbox: SandboxHandle) -> AtomscaleCredentials:
    """A saved credentials block for lab A on the sandbox, under a name of its own, loaded."""
    name = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(name)
    return cast(AtomscaleCredentials, AtomscaleCredentials.load(name))


def create_directly(
    sandbox: SandboxHandle,
    name: str,
    substrate: str,
    layers: list[dict[str, Any]],
    *,
    key: str = KEY_A,
    owned_by: str | None = KEY_A,
) -> int:
    """Create a target material and layers with plain HTTP: no task, no Prefect cache.

    `owned_by` is the API key whose ownership token it carries, as if a run with that key
    (on another worker, from another home) had created it; None for a material made in
    the web app, which carries none.
    """
    headers = {"X-API-KEY": key}
    metadata: dict[str, Any] = {}
    if owned_by is not None:
        account = AtomscaleCredentials(api_key=owned_by, base_url=sandbox.url)
        token = owner_token(account.key_fingerprint(), name)
        metadata = {OWNER_KEY: {"owner": token}}
    reply = httpx.post(
        f"{sandbox.url}{TARGET_MATERIALS}",
        headers=headers,
        json={"sample": {"sample_name": name, "substrate": substrate, "sample_metadata": metadata}},
    )
    reply.raise_for_status()
    sample_id: int = reply.json()["sample_id"]
    for position, layer in enumerate(layers, start=1):
        body = {"layer_id": position, "sample_id": sample_id, **layer}
        httpx.post(f"{sandbox.url}{LAYERS}", headers=headers, json=body).raise_for_status()
    return sample_id


# --------------------------------------------------------------------------- the format


@pytest.mark.parametrize(
    ("example", "name", "substrate", "formulas"),
    [
        (
            FILM,
            "BaTiO3 film on SrTiO3 (PLD-0412)",
            "SrTiO3",
            ["BaTiO3"],
        ),
        (
            HEMT,
            "AlGaN/GaN HEMT on c-sapphire (MOCVD-0117)",
            "Al2O3",
            ["AlN", "GaN", "AlN", "Al0.25Ga0.75N", "GaN"],
        ),
        (
            SUPERLATTICE,
            "BTO/STO superlattice x20 with SRO electrodes (MBE-2024-031)",
            "SrTiO3",
            ["SrRuO3", *["BaTiO3", "SrTiO3"] * 20, "SrRuO3"],
        ),
    ],
)
def test_the_examples_load(example: Path, name: str, substrate: str, formulas: list[str]) -> None:
    spec = load_stack_file(example)
    assert (spec.name, spec.substrate) == (name, substrate)
    assert [layer.composition for layer in spec.layer_specs()] == formulas
    assert spec.metadata["growth"] in ("PLD", "MOCVD", "MBE")


def test_a_superlattice_expands_to_consecutive_positions_with_its_periods() -> None:
    layers = load_stack_file(SUPERLATTICE).expanded_layers()
    assert [layer.position for layer in layers] == list(range(1, 43))
    assert layers[0].period is None and layers[-1].period is None
    inner = layers[1:41]
    assert [layer.period for layer in inner] == [p for p in range(1, 21) for _ in range(2)]
    assert {layer.periods for layer in inner} == {20}
    assert layers[3].describe() == "L4 BaTiO3 001 (period 2 of 20)"


def test_yaml_keeps_text_fields_as_written_and_numbers_in_metadata() -> None:
    spec = load_stack_file(SUPERLATTICE)
    # Unquoted 001 is the integer 1 to YAML; the file means the orientation 001.
    assert {layer.orientation for layer in spec.layer_specs()} == {"001"}
    assert spec.metadata["temperature_C"] == 650
    assert spec.metadata["ozone_pressure_torr"] == pytest.approx(1e-6)
    assert spec.metadata["grown_on"] == "2024-05-14"  # a date, kept as text for JSON


def test_yaml_reads_010_and_formulas_yaml_would_call_booleans(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "odd.yml",
        "name: 2024031\nsubstrate: MgO\nlayers:\n"
        "  - {composition: NO, orientation: 010}\n"
        "  - {composition: TiO2, orientation: 110}\n",
    )
    spec = load_stack_file(path)
    assert spec.name == "2024031"
    assert [(layer.composition, layer.orientation) for layer in spec.layer_specs()] == [
        ("NO", "010"),
        ("TiO2", "110"),
    ]


def test_yaml_json_and_csv_describe_the_same_stack(tmp_path: Path) -> None:
    layers = [("SrRuO3", "001"), ("BaTiO3", "001"), ("(La0.7Sr0.3)MnO3", "001")]
    yaml_text = "name: MTJ 7\nsubstrate: SrTiO3\nmetadata: {growth: PLD, temperature_C: 700}\n"
    yaml_text += "layers:\n" + "".join(
        f"  - composition: {formula}\n    orientation: '{hkl}'\n" for formula, hkl in layers
    )
    as_json = {
        "name": "MTJ 7",
        "substrate": "SrTiO3",
        "metadata": {"growth": "PLD", "temperature_C": 700},
        "layers": [{"composition": formula, "orientation": hkl} for formula, hkl in layers],
    }
    csv_text = "# name: MTJ 7\n# substrate: SrTiO3\n# metadata.growth: PLD\n"
    csv_text += "# metadata.temperature_C: 700\ncomposition,orientation\n"
    csv_text += "".join(f"{formula},{hkl}\n" for formula, hkl in layers)
    specs = [
        load_stack_file(write(tmp_path, "s.yaml", yaml_text)),
        load_stack_file(write(tmp_path, "s.json", json.dumps(as_json))),
        load_stack_file(write(tmp_path, "s.csv", csv_text)),
    ]
    assert specs[0] == specs[1] == specs[2]


def test_specs_can_be_built_in_code() -> None:
    spec = StackSpec(
        name="SL",
        substrate="SrTiO3",
        layers=[RepeatBlock(repeat=3, layers=[LayerSpec(composition="BaTiO3")])],
    )
    assert len(spec.layer_specs()) == 3
    with pytest.raises(ValueError, match="unknown element"):
        LayerSpec(composition="Xx2O3")


def test_build_stack_uses_the_same_layer_spec() -> None:
    from flows import build_stack

    assert build_stack.LayerSpec is LayerSpec


# --------------------------------------------------------------------------- the checks


def test_an_error_names_the_file_the_layer_its_period_and_the_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sl.yaml",
        "name: SL\n"
        "substrate: SrTiO3\n"
        "layers:\n"
        "  - composition: SrRuO3\n"
        "  - repeat: 20\n"
        "    layers:\n"
        "      - composition: BaTiO3\n"
        "      - composition: SrTiO3\n"
        "        orientation: (0 0 1 1 1)\n",
    )
    error = problems_of(path)
    [problem] = error.problems
    assert (problem.position, problem.period, problem.field, problem.line) == (
        3,
        1,
        "orientation",
        9,
    )
    message = str(error)
    assert message.startswith(f"{path}: layer L3 (line 9; period 1 of 20")
    assert "field 'orientation'" in message
    assert "not 3 or 4" in message
    assert "Nothing was sent" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many.yaml",
        "name: x\n"
        "substrate: y\n"
        "colour: blue\n"
        "layers:\n"
        "  - composition: Xx2O3\n"
        "  - compostion: GaN\n"
        "  - {composition: GaN, mp_id: '804'}\n",
    )
    error = problems_of(path)
    found = {(problem.position, problem.field) for problem in error.problems}
    assert found == {
        (None, "colour"),
        (1, "composition"),
        (2, "composition"),
        (2, "compostion"),
        (3, "mp_id"),
    }
    assert "did you mean 'composition'?" in str(error)
    assert str(error).startswith(f"{path} has 5 problems; nothing was sent.")


@pytest.mark.parametrize(
    ("file_name", "text", "expected"),
    [
        (
            "nested.yaml",
            "name: x\nsubstrate: y\nlayers:\n  - repeat: 2\n    layers:\n"
            "      - repeat: 3\n        layers: [{composition: GaN}]\n",
            "repeat block L1-L2 (line 5), field 'layers': a repeat block cannot contain another",
        ),
        (
            "zero.yaml",
            "name: x\nsubstrate: y\nlayers:\n  - {repeat: 0, layers: [{composition: GaN}]}\n",
            "field 'repeat': Input should be greater than or equal to 1, got 0",
        ),
        ("empty.json", '{"name": "x", "substrate": "y", "layers": []}', "lists no layers"),
        ("unnamed.json", '{"substrate": "y", "layers": [{"composition": "GaN"}]}', "'name': is"),
        (
            "blank.json",
            '{"name": " ", "substrate": "y", "layers": [{"composition": "GaN"}]}',
            "field 'name': name is empty",
        ),
        (
            "alias.json",
            '{"sample_name": "x", "substrate": "y", "layers": [{"composition": "GaN"}]}',
            "unknown field 'sample_name'; did you mean 'name'?",
        ),
        (
            "elements.json",
            '{"name": "x", "substrate": "y", "layers": '
            '[{"composition": "GaN", "element_dict": {"Gx": 1}}]}',
            "layer L1, field 'element_dict': element_dict has 'Gx', which is not an element",
        ),
        (
            "metadata.json",
            '{"name": "x", "substrate": "y", "metadata": [1], "layers": [{"composition": "GaN"}]}',
            "field 'metadata': Input should be a valid dictionary, got list [1]",
        ),
        ("twice.json", '{"name": "x", "name": "y"}', "field 'name': appears twice"),
        ("syntax.yaml", "name: x\nsubstrate: [\n", "line 3: not valid YAML"),
        ("syntax.json", '{"name": "x",\n  "substrate": }', "line 2: not valid JSON"),
        ("list.yaml", "- composition: GaN\n", "must describe one target material"),
        ("stack.txt", "name: x", "unsupported file type '.txt'"),
        (
            "rows.csv",
            "# name: x\n# substrate: y\nlayer,composition\n1,GaN\n3,AlN\n",
            "layer L2 (line 5), field 'layer': the row says layer '3' but it is row 2",
        ),
        (
            "excel.csv",
            "# name: x\n# substrate: y\ncomposition,orientation\nGaN,1\n",
            "layer L1 (line 4), field 'orientation': '1' has fewer than 3 Miller indices; if a "
            "spreadsheet turned 001 into 1",
        ),
        (
            "columns.csv",
            "# name: x\n# substrate: y\ncomposition,thickness_nm\nGaN,20\n",
            "line 3, field 'thickness_nm': read as ','-separated: unknown column",
        ),
        (
            "bare.csv",
            "composition\nGaN\n",
            "field 'substrate': is missing; add a line '# substrate: ...' above the column header",
        ),
    ],
)
def test_bad_files_are_refused_with_a_reason(
    tmp_path: Path, file_name: str, text: str, expected: str
) -> None:
    error = problems_of(write(tmp_path, file_name, text))
    assert expected in str(error)
    assert str(error).startswith(str(tmp_path / file_name))


def test_a_missing_file_is_a_stack_file_error(tmp_path: Path) -> None:
    assert "cannot read it: No such file or directory" in str(problems_of(tmp_path / "no.yaml"))


def test_the_error_is_a_validation_error_that_survives_pickling(tmp_path: Path) -> None:
    error = problems_of(write(tmp_path, "x.json", '{"name": "x"}'))
    assert isinstance(error, AtomscaleValidationError)
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert copy.problems == error.problems
    assert copy.path == error.path


def test_parse_stack_checks_data_from_anywhere() -> None:
    with pytest.raises(InvalidStackFileError, match=r"^form: layer L1, field 'orientation'"):
        parse_stack(
            {"name": "x", "substrate": "y", "layers": [{"composition": "GaN", "orientation": "x"}]},
            source="form",
        )


# --------------------------------------------------------------------------- what exists


def rows(
    sample_id: int, name: str, substrate: str, *layers: tuple[str, str]
) -> list[TargetMaterialRow]:
    return [
        TargetMaterialRow(
            id=100 * sample_id + position,
            sample_id=sample_id,
            sample_name=name,
            substrate=substrate,
            layer_id=position,
            composition_string=formula,
            orientation=hkl,
        )
        for position, (formula, hkl) in enumerate(layers, start=1)
    ]


HETERO = parse_stack(
    {
        "name": "H1",
        "substrate": "SrTiO3",
        "layers": [
            {"composition": "SrRuO3", "orientation": "(001)"},
            {"composition": "BaTiO3", "orientation": "(001)"},
        ],
    }
)


def test_absent_when_no_target_material_has_the_name() -> None:
    existing = compare_with_existing(HETERO, rows(1, "H2", "SrTiO3", ("SrRuO3", "001")))
    assert existing.status == "absent"


def test_complete_when_every_layer_matches_after_normalising() -> None:
    found = rows(4, "H1", "SrTiO3", ("SrRuO3", "001"), ("BaTiO3", "001"))
    existing = compare_with_existing(HETERO, found)
    assert existing.status == "complete"
    assert existing.material is not None and existing.material.sample_id == 4
    assert sorted(existing.layers) == [1, 2]


def test_partial_when_positions_are_missing_and_nothing_differs() -> None:
    existing = compare_with_existing(HETERO, rows(4, "H1", "SrTiO3", ("SrRuO3", "001")))
    assert (existing.status, existing.missing) == ("partial", [2])


def test_conflict_when_a_layer_or_the_substrate_differs() -> None:
    other_layer = compare_with_existing(
        HETERO, rows(4, "H1", "SrTiO3", ("SrRuO3", "001"), ("PbTiO3", "001"))
    )
    assert other_layer.status == "conflict"
    assert other_layer.problems == ["sample_id 4: L2 is PbTiO3 001, the file says L2 BaTiO3 (001)"]
    other_substrate = compare_with_existing(HETERO, rows(4, "H1", "MgO", ("SrRuO3", "001")))
    assert other_substrate.status == "conflict"
    assert "substrate is 'MgO'" in other_substrate.problems[0]
    too_many = compare_with_existing(
        HETERO, rows(4, "H1", "SrTiO3", ("SrRuO3", "001"), ("BaTiO3", "001"), ("GaN", "0001"))
    )
    assert "beyond the file's 2: L3" in too_many.problems[0]


def test_a_complete_one_wins_over_others_of_the_same_name_and_two_partial_ones_conflict() -> None:
    complete = rows(5, "H1", "SrTiO3", ("SrRuO3", "001"), ("BaTiO3", "001"))
    partial = rows(3, "H1", "SrTiO3", ("SrRuO3", "001"))
    assert compare_with_existing(HETERO, partial + complete).status == "complete"
    ambiguous = compare_with_existing(HETERO, partial + rows(6, "H1", "SrTiO3", ("SrRuO3", "001")))
    assert ambiguous.status == "conflict"
    assert "sample_id 3, 6" in ambiguous.problems[0]


# --------------------------------------------------------------------------- the flows


def test_a_bad_file_fails_the_flow_before_any_request(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials
) -> None:
    path = write(tmp_path, "bad.yaml", "name: x\nsubstrate: y\nlayers:\n  - composition: Xx2O3\n")
    state = stack_from_file(str(path), block, return_state=True)
    assert state.is_failed()
    assert f"{path}: layer L1 (line 4), field 'composition'" in (state.message or "")
    assert sandbox.stats.requests == 0


def test_a_file_is_created_once_then_found_created(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = copy_as(SUPERLATTICE, tmp_path, unique)
    first = stack_from_file(str(path), block)
    assert (first.status, first.name, first.layers) == ("created", unique, 42)
    # The target material and its 42 layers in one request: it is never empty.
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 1
    assert requests_to(sandbox, "POST", LAYERS) == 0
    stored = sandbox.layer_rows(organisation="lab-a", sample_id=first.sample_id)
    assert sorted(row["layer_id"] for row in stored) == list(range(1, 43))
    by_position = {row["layer_id"]: row["composition_string"] for row in stored}
    assert [by_position[p] for p in (1, 2, 3, 41, 42)] == [
        "SrRuO3",
        "BaTiO3",
        "SrTiO3",
        "SrTiO3",
        "SrRuO3",
    ]

    sandbox.reset_stats()
    again = stack_from_file(str(path), block)
    assert (again.status, again.sample_id) == ("already created", first.sample_id)
    assert requests_to(sandbox, "POST", LAYERS) == 0
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 0


def test_created_means_at_the_service_not_in_this_cache(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    """A stack this account created elsewhere (another worker, another home) is skipped."""
    layers = [{"composition_string": f, "orientation": "0001"} for f in ("AlN", "GaN")]
    sample_id = create_directly(sandbox, unique, "Al2O3", layers)
    path = write(
        tmp_path,
        "hemt.yaml",
        f"name: {unique}\nsubstrate: Al2O3\nlayers:\n"
        "  - {composition: AlN, orientation: (0001)}\n  - {composition: GaN, orientation: 0001}\n",
    )
    sandbox.reset_stats()
    outcome = stack_from_file(str(path), block)
    assert (outcome.status, outcome.sample_id) == ("already created", sample_id)
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 1
    assert (
        requests_to(sandbox, "POST", LAYERS) == requests_to(sandbox, "POST", TARGET_MATERIALS) == 0
    )


def test_a_half_created_stack_gets_only_its_missing_layers(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = copy_as(HEMT, tmp_path, unique)
    first_two = [{"composition_string": f, "orientation": "0001"} for f in ("AlN", "GaN")]
    sample_id = create_directly(sandbox, unique, "Al2O3", first_two)
    sandbox.reset_stats()
    outcome = stack_from_file(str(path), block)
    assert (outcome.status, outcome.sample_id, outcome.layers) == ("completed", sample_id, 5)
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 0
    assert requests_to(sandbox, "POST", LAYERS) == 3
    stored = sandbox.layer_rows(organisation="lab-a", sample_id=sample_id)
    assert sorted(row["layer_id"] for row in stored) == [1, 2, 3, 4, 5]
    assert outcome.message == "3 created now, 2 already there"


def test_a_different_stack_of_the_same_name_is_left_alone(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = copy_as(HEMT, tmp_path, unique)
    other = create_directly(
        sandbox, unique, "Al2O3", [{"composition_string": "GaN", "orientation": "0001"}]
    )
    sandbox.reset_stats()
    state = stack_from_file(str(path), block, return_state=True)
    assert state.is_failed()
    with pytest.raises(StackConflictError) as caught:
        state.result()
    assert str(caught.value).startswith(f"{path}: the account already has a target material")
    assert "L1 is GaN 0001, the file says L1 AlN 0001" in str(caught.value)
    assert (
        requests_to(sandbox, "POST", LAYERS) == requests_to(sandbox, "POST", TARGET_MATERIALS) == 0
    )
    # The file's stack, nothing of it sent, and where it differs.
    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert artifacts["markdown"].key == f"stack-{unique}-not-created"
    rows = layer_table(state.state_details.flow_run_id)
    assert {row["status"] for row in rows} == {"not attempted"}
    assert rows[0]["reason"] == f"target material {other} has GaN 0001 here"
    assert rows[1]["reason"] == "not sent: the account has a different stack of this name"


def test_a_folder_run_creates_new_files_reports_bad_ones_and_skips_created_ones(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    folder = tmp_path / "stacks"
    folder.mkdir()
    for index, example in enumerate((FILM, HEMT, SUPERLATTICE)):
        copy_as(example, folder, f"{unique}-{index}")
    bad = write(folder, "typo.yaml", "name: x\nsubstrate: y\nlayers:\n  - composition: BaTiO₃\n")
    write(folder, "notes.txt", "not a stack file")

    state = stacks_from_folder(str(folder), block, return_state=True)
    assert state.is_failed()
    assert "1 of 4 stack files" in (state.message or "")
    assert "typo.yaml (invalid: layer L1 (line 4), field 'composition'" in (state.message or "")
    names = {row["sample_name"] for row in sandbox.target_materials(organisation="lab-a")}
    assert {f"{unique}-{index}" for index in range(3)} <= names
    # Each new target material is sent with its whole stack, in one request each.
    assert requests_to(sandbox, "POST", TARGET_MATERIALS) == 3
    assert requests_to(sandbox, "POST", LAYERS) == 0

    bad.unlink()
    sandbox.reset_stats()
    outcomes = stacks_from_folder(str(folder), block)
    assert [outcome.status for outcome in outcomes] == ["already created"] * 3
    assert requests_to(sandbox, "GET", TARGET_MATERIALS) == 1
    assert (
        requests_to(sandbox, "POST", LAYERS) == requests_to(sandbox, "POST", TARGET_MATERIALS) == 0
    )


def test_two_files_naming_the_same_target_material_are_both_refused(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    copy_as(FILM, tmp_path, unique)
    shutil.copy(tmp_path / FILM.name, tmp_path / "copy.csv")
    state = stacks_from_folder(str(tmp_path), block, return_state=True)
    assert state.is_failed()
    assert "bto_film_on_sto.csv, copy.csv (invalid: 2 files describe" in (state.message or "")
    assert sandbox.stats.requests == 0


@pytest.mark.newcomer_script("flows/stack_from_file.py")
def test_the_script_creates_every_example_on_a_fresh_machine(
    newcomer_run: subprocess.CompletedProcess[str],
) -> None:
    """`python flows/stack_from_file.py` as the README shows it: no server, no block."""
    result = newcomer_run
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "bto_film_on_sto.csv: created 1 created now" in result.stdout
    assert "gan_hemt_on_sapphire.json: created 5 created now" in result.stdout
    assert "bto_sto_superlattice.yaml: created 42 created now" in result.stdout
    assert "Traceback" not in output
    assert "ERROR" not in output


def test_a_colleagues_material_of_the_same_name_is_never_taken_or_extended(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    """Same name in the organisation, made in the web app or with another key: not ours."""
    path = copy_as(HEMT, tmp_path, unique)
    first_two = [{"composition_string": f, "orientation": "0001"} for f in ("AlN", "GaN")]
    web_app = create_directly(sandbox, unique, "Al2O3", first_two, key=KEY_A2, owned_by=None)
    other_key = create_directly(sandbox, unique, "Al2O3", first_two, key=KEY_A2, owned_by=KEY_A2)
    sandbox.reset_stats()
    outcome = stack_from_file(str(path), block)
    assert outcome.status == "created"
    assert outcome.sample_id not in (web_app, other_key)
    for colleagues in (web_app, other_key):
        assert sandbox.count_layers(sample_id=colleagues) == 2  # untouched
    assert requests_to(sandbox, "POST", LAYERS) == requests_to(sandbox, "PATCH", LAYERS) == 0


def test_a_stack_whose_layers_were_deleted_at_the_service_is_written_again(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    """The cache is a hint: what the service says is missing is written, every run."""
    path = copy_as(HEMT, tmp_path, unique)
    first = stack_from_file(str(path), block)
    assert first.sample_id is not None
    sandbox.app.store.replace_layers("lab-a", first.sample_id, [])  # deleted in the web app
    again = stack_from_file(str(path), block)
    assert again.status == "created"
    assert again.sample_id is not None
    stored = sandbox.layer_rows(organisation="lab-a", sample_id=again.sample_id)
    assert sorted(row["layer_id"] for row in stored) == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- small things


def test_a_missing_relative_path_names_the_folder_it_was_resolved_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidStackFileError) as caught:
        load_stack_file("stacks/missing.yaml")
    assert f"(resolved against the working directory {tmp_path}: " in str(caught.value)
    assert str(tmp_path / "stacks" / "missing.yaml") in str(caught.value)
    with pytest.raises(FileNotFoundError) as folder:
        stack_files("stacks")
    assert str(folder.value) == (
        "The stack folder 'stacks' does not exist (resolved against the working directory "
        f"{tmp_path}: {tmp_path / 'stacks'})."
    )
    # An absolute path needs no such note.
    with pytest.raises(FileNotFoundError) as absolute:
        stack_files(tmp_path / "nowhere")
    assert "working directory" not in str(absolute.value)


def test_only_names_prefect_made_up_are_replaced_by_ours() -> None:
    from prefect.utilities.names import generate_slug

    assert all(is_made_up_run_name(generate_slug(2)) for _ in range(500))
    assert is_made_up_run_name(None) and is_made_up_run_name("")
    # What the UI's run form proposes, left as it is (seen in Prefect 3.9.1's two UIs).
    assert is_made_up_run_name("Small-Jacana") and is_made_up_run_name("xi309-emila-manifold")
    for typed in (
        "Custom run",
        "rerun-after-the-fix",
        "bto-2026-12-01",
        "stack-from-file-sl.yaml",  # ours, from an earlier attempt: kept too
        "Ada's HEMT",
    ):
        assert not is_made_up_run_name(typed), typed


# --------------------------------------------------------------------------- what a run shows


def layer_table(flow_run_id: Any) -> list[dict[str, Any]]:
    """The rows of a run's layer table artifact."""
    table = artifacts_of(flow_run_id)["table"]
    return cast(list[dict[str, Any]], json.loads(cast(str, table.data)))


def test_a_run_carries_its_target_materials_id_in_its_name_tags_and_message(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = copy_as(FILM, tmp_path, unique)
    for expected in ("1 created now", "already created, nothing written"):
        state = stack_from_file(str(path), block, return_state=True)
        outcome = state.result()
        url = f"{sandbox.url}/target-materials/{outcome.sample_id}"
        assert outcome.url == url
        assert state.message == (
            f"Target material {outcome.sample_id} ({unique!r}): {expected}. "
            f"Open in Atomscale: {url}"
        )
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.name == f"stack-from-file-bto_film_on_sto.csv-s{outcome.sample_id}"
        assert run.tags == [f"target-material-{outcome.sample_id}"]
    # A name a person typed is kept; the tag is still added.
    typed = stack_from_file.with_options(flow_run_name="Ada's BTO film")
    state = typed(str(path), block, return_state=True)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert (run.name, run.tags) == ("Ada's BTO film", [f"target-material-{outcome.sample_id}"])


def test_a_json_files_refused_layer_is_l2_in_every_reason(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    """The service counts layers from 0 (`layers.1.space_group`); every reason says L2."""
    folder = tmp_path / "stacks"
    folder.mkdir()
    stack = {
        "name": unique,
        "substrate": "Al2O3",
        "layers": [
            {"composition": "AlN", "orientation": "0001"},
            {"composition": "GaN", "orientation": "0001", "space_group": LONG_SPACE_GROUP},
        ],
    }
    (folder / "hemt.json").write_text(json.dumps(stack))
    state = stacks_from_folder(str(folder), block, return_state=True)
    assert state.is_failed()
    refused = "space_group: String should have at most 32 characters (422)"
    assert f"hemt.json (failed: L2 refused: {refused})" in (state.message or "")
    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
    said = f"the service refused L2 (GaN 0001): {refused}; none of its 2 layers was written."
    assert f"{said} Fix L2 in " in (run.state.message if run.state else "")
    rows = layer_table(run.id)
    assert rows[1]["reason"] == refused
    texts = [state.message, run.state.message if run.state else "", json.dumps(rows)]
    texts += [str(a.data) for a in artifacts_of(parent).values()]
    assert not [text for text in texts if "layers.1" in str(text)]


def test_a_new_file_in_an_outage_publishes_its_stack_and_says_to_run_again(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = copy_as(HEMT, tmp_path, unique)
    sandbox.faults.set(rate=1.0, kinds={"503"})  # every write refused, the listing works
    state = stack_from_file(str(path), block, return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert f"{path}: target material {unique!r} not created, none of its 5 layers written: " in (
        message
    )
    assert message.endswith("Run again once the service answers.")
    rows = layer_table(state.state_details.flow_run_id)
    assert {row["status"] for row in rows} == {"not attempted"}
    assert {row["reason"] for row in rows} == {rows[0]["reason"]}
    assert rows[0]["reason"].startswith("not written: ") and "(503)" in rows[0]["reason"]


@pytest.mark.integration
def test_a_service_that_is_down_still_gets_the_files_stack_published(
    tmp_path: Path, unique: str
) -> None:
    with run_sandbox() as stopped:
        url, key = stopped.url, stopped.api_key
    name = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=key, base_url=url, timeout=2.0).save(name)
    credentials = cast(AtomscaleCredentials, AtomscaleCredentials.load(name))
    path = copy_as(FILM, tmp_path, unique)
    state = stack_from_file(str(path), credentials, return_state=True)
    assert state.is_failed()
    assert "Could not connect to " in (state.message or "")
    assert (state.message or "").endswith("Run again once the service answers.")
    [row] = layer_table(state.state_details.flow_run_id)
    assert row["status"] == "not attempted" and "Could not connect" in row["reason"]


def test_a_new_stacks_completed_event_counts_the_layers_created_with_it(
    tmp_path: Path, block: AtomscaleCredentials, unique: str
) -> None:
    """Created with the material in one request, read back by create_layers: created."""
    path = copy_as(HEMT, tmp_path, unique)
    state = stack_from_file(str(path), block, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    EventsWorker.drain_all(timeout=30)

    def completed() -> list[Any]:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["atomscale.stack.completed"]),
                    related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                ),
                limit=10,
            )
        return list(page.events)

    [event] = eventually(completed, lambda found: len(found) == 1)
    counts = {key: event.payload[key] for key in ("layers", "created", "already_there", "updated")}
    assert counts == {"layers": 5, "created": 5, "already_there": 0, "updated": 0}


# ----------------------------------------------------------- CSV as spreadsheets write it
#
# Excel in much of Europe writes ';' (',' is the decimal mark there), a byte-order mark
# with "CSV UTF-8", CRLF line ends, and pads short rows with empty cells; a tab-separated
# export writes tabs. The files below are written as bytes, as those programs write them.

BOM = b"\xef\xbb\xbf"


def spreadsheet_file(
    folder: Path, rows: list[list[str]], *, delimiter: str, name: str = "lab.csv"
) -> Path:
    """A CSV written as a spreadsheet writes it: a BOM, CRLF, every row padded to one width."""
    width = max(len(row) for row in rows)
    lines = []
    for row in rows:
        cells = [
            f'"{cell}"' if delimiter in cell or '"' in cell else cell
            for cell in row + [""] * (width - len(row))
        ]
        lines.append(delimiter.join(cells))
    path = folder / name
    path.write_bytes(BOM + "\r\n".join(lines).encode() + b"\r\n")
    return path


def lab_rows(name: str = "BTO on STO, PLD-0412") -> list[list[str]]:
    """A two-layer stack as a lab keeps it in a spreadsheet (a decimal comma included)."""
    return [
        ["# Grown by PLD; 20 nm; the note has the delimiters in it"],
        [f"# name: {name}"],
        ["# substrate: SrTiO3"],
        ["# metadata.temperature_C: 700,5"],
        ["layer", "composition", "orientation", "space_group"],
        ["1", "SrRuO3", "001", "Pnma"],
        ["2", "Ba0,7Sr0,3TiO3", "001"],
        [],
    ]


def as_written_in_yaml(name: str = "BTO on STO, PLD-0412") -> StackSpec:
    return parse_stack(
        {
            "name": name,
            "substrate": "SrTiO3",
            "metadata": {"temperature_C": 700.5},
            "layers": [
                {"composition": "SrRuO3", "orientation": "001", "space_group": "Pnma"},
                {"composition": "Ba0.7Sr0.3TiO3", "orientation": "001"},
            ],
        }
    )


@pytest.mark.parametrize("delimiter", [";", "\t", ","], ids=["semicolons", "tabs", "commas"])
def test_a_spreadsheets_csv_reads_as_the_same_stack(tmp_path: Path, delimiter: str) -> None:
    path = spreadsheet_file(tmp_path, lab_rows(), delimiter=delimiter)
    assert path.read_bytes().startswith(BOM)
    assert b"\r\n" in path.read_bytes()
    spec = load_stack_file(path)
    if delimiter == ",":
        # Only a file whose cells are not comma-separated has decimal commas.
        assert spec.metadata == {"temperature_C": "700,5"}
        spec = spec.model_copy(update={"metadata": {"temperature_C": 700.5}})
    assert spec == as_written_in_yaml()


def test_old_mac_line_ends_and_a_file_without_bom_read_too(tmp_path: Path) -> None:
    text = "# name: BTO on STO, PLD-0412\r# substrate: SrTiO3\r# metadata.temperature_C: 700,5\r"
    text += "layer;composition;orientation;space_group\r1;SrRuO3;001;Pnma\r2;Ba0,7Sr0,3TiO3;001\r"
    path = tmp_path / "mac.csv"
    path.write_bytes(text.encode())
    assert load_stack_file(path) == as_written_in_yaml()


@pytest.mark.parametrize(
    ("delimiter", "read_as"), [(";", "read as ';'-separated"), ("\t", "read as tab-separated")]
)
def test_an_unknown_column_says_which_delimiter_the_file_was_read_with(
    tmp_path: Path, delimiter: str, read_as: str
) -> None:
    rows = lab_rows()
    rows[4] = ["layer", "composition", "orientation", "thickness_nm"]
    rows[5] = ["1", "SrRuO3", "001", "12,5"]
    error = problems_of(spreadsheet_file(tmp_path, rows, delimiter=delimiter))
    assert f"line 5, field 'thickness_nm': {read_as}: unknown column 'thickness_nm'" in str(error)
    assert len(error.problems) == 1  # the decimal comma in the row did not split it


def test_mistakes_in_a_spreadsheets_csv_keep_their_line_numbers(tmp_path: Path) -> None:
    rows = lab_rows()
    rows[5] = ["1", "SrRuO4x", "1"]  # a typo, and 001 saved as the number 1
    rows[6] = ["3", "BaTiO3", "001", "", "12,5"]  # the wrong layer, a value with no column
    error = problems_of(spreadsheet_file(tmp_path, rows, delimiter=";"))
    described = [problem.describe() for problem in error.problems]
    assert any(d.startswith("layer L1 (line 6), field 'orientation': '1' has") for d in described)
    assert any(d.startswith("layer L1 (line 6), field 'composition'") for d in described)
    assert any(d.startswith("layer L2 (line 7), field 'layer': the row says") for d in described)
    assert "layer L2 (line 7): '12,5' is in column 5, which has no name" in str(error)


def test_a_spreadsheets_csv_that_is_not_utf8_says_how_to_save_it(tmp_path: Path) -> None:
    path = tmp_path / "ansi.csv"
    path.write_bytes(
        "# name: 20 \u00b5m film\r\n# substrate: SrTiO3\r\ncomposition\r\nGaN\r\n".encode("cp1252")
    )
    assert "not UTF-8 text (byte 0xb5 at offset 11); save it as UTF-8" in str(problems_of(path))


def test_the_flow_creates_the_stack_of_an_excel_csv(
    tmp_path: Path, sandbox: SandboxHandle, block: AtomscaleCredentials, unique: str
) -> None:
    path = spreadsheet_file(tmp_path, lab_rows(unique), delimiter=";")
    outcome = stack_from_file(str(path), block)
    assert (outcome.status, outcome.name, outcome.layers) == ("created", unique, 2)
    stored = sandbox.layer_rows(organisation="lab-a", sample_id=outcome.sample_id)
    assert [(row["layer_id"], row["composition_string"]) for row in stored] == [
        (1, "SrRuO3"),
        (2, "Ba0.7Sr0.3TiO3"),
    ]


def long_stack(folder: Path, name: str, count: int, refused: set[int] = frozenset()) -> Path:
    """A stack file of `count` layers; those at `refused` have a space group the service refuses."""
    lines = [f"name: {name}", "substrate: SrTiO3", "layers:"]
    for position in range(1, count + 1):
        formula = "BaTiO3" if position % 2 else "SrTiO3"
        extra = f", space_group: {LONG_SPACE_GROUP}" if position in refused else ""
        lines.append(f"  - {{composition: {formula}, orientation: '001'{extra}}}")
    path = folder / "long.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_long_stacks_log_is_a_summary_and_its_table_has_every_layer(
    tmp_path: Path, block: AtomscaleCredentials, unique: str
) -> None:
    from test_artifacts import run_logs

    from prefect_atomscale.flows._layer_log import LAYERS_LISTED

    count = LAYERS_LISTED + 10
    state = stack_from_file(str(long_stack(tmp_path, unique, count)), block, return_state=True)
    sample_id = state.result().sample_id
    flow_run_id = state.state_details.flow_run_id
    logs = run_logs(flow_run_id, until="Finished in state Completed(")
    flow_lines = [message for _, task, message in logs if task is None]
    assert not [line for line in flow_lines if re.match(r"L\d+ ", line)]
    key = f"layers-{unique}-s{sample_id}"
    assert (
        f"{count} layers in place: L1-L{count} created. Each layer's formula, orientation, "
        f"space group and record are in the table artifact {key}."
    ) in flow_lines
    # One line for the whole stack from create_layers too, which agrees: created with it.
    task_lines = [message for _, task, message in logs if task is not None]
    assert [line for line in task_lines if line.startswith("Read back")] == [
        f"Read back the {count}-layer stack of target material {sample_id}: its {count} layers "
        "were created with the target material; nothing to write."
    ]
    assert len(layer_table(flow_run_id)) == count


def test_a_long_stack_that_fails_warns_per_failed_layer_up_to_a_cap(
    tmp_path: Path, block: AtomscaleCredentials, unique: str
) -> None:
    from test_artifacts import run_logs

    from prefect_atomscale.flows._layer_log import FAILED_LISTED, LAYERS_LISTED

    count = LAYERS_LISTED + 10
    refused = set(range(1, 2 * (FAILED_LISTED + 5), 2))  # L1, L3, ...: 5 more than the cap
    path = long_stack(tmp_path, unique, count, refused)
    state = stack_from_file(str(path), block, return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    logs = run_logs(flow_run_id, until="Finished in state Failed")
    warnings = [message for level, task, message in logs if level == 30 and task is None]
    failed = [line for line in warnings if re.match(r"L\d+ \w+ 001: failed: ", line)]
    assert len(failed) == FAILED_LISTED
    assert failed[0] == (
        "L1 BaTiO3 001: failed: space_group: String should have at most 32 characters (422)."
    )
    assert f"5 more failed: L{2 * FAILED_LISTED + 1}, " in "\n".join(warnings)
    not_attempted = [line for line in warnings if " not attempted: " in line]
    assert len(not_attempted) == 1  # one reason, said once for all those layers
    assert not_attempted[0].startswith("L2, L4, L6, ")
    infos = [message for level, task, message in logs if level == 20 and task is None]
    assert f"The table artifact layers-{unique}-not-created has every layer" in "\n".join(infos)
    rows = layer_table(flow_run_id)
    assert len(rows) == count
    assert sum(row["status"] == "failed" for row in rows) == len(refused)
