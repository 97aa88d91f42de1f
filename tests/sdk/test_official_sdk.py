"""The official `atomscale` SDK, a client nobody here wrote, as a witness of the sandbox.

Whatever this project guesses about the physical-sample API, its sandbox guesses too;
the SDK is written against the real service. So it talks to the sandbox here, after and
before our flows, and the two must agree on the records: its listing shows the growth
run our flow made with its target material, its resolve-or-create by name (the path
`Client.upload(files, physical_sample=NAME)` takes first) finds that growth run and
creates no second one, and our task adopts one it created. Its 409 handling is checked
against both of the sandbox's 409 shapes.

Lane `sdk` (the extra `sdk`: numpy, pandas, matplotlib, ...): `pytest -m sdk` runs only
these; the README's test command runs them with the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from atomscale import Client
from prefect import flow

from atomscale_sandbox import SandboxHandle
from prefect_atomscale import AtomscaleCredentials, GrowthRun, create_growth_run
from prefect_atomscale.flows import growth_run_from_file

from conftest import KEY_A  # isort: skip

pytestmark = pytest.mark.sdk


def _sdk(sandbox: SandboxHandle) -> Client:
    # The endpoint ends in "/": the SDK joins paths with urljoin.
    return Client(api_key=KEY_A, endpoint=f"{sandbox.url}/", mute_bars=True)


def _named(sandbox: SandboxHandle, name: str) -> list[dict[str, Any]]:
    key = name.strip().lower()
    return [
        sample
        for sample in sandbox.physical_samples(organisation="lab-a")
        if sample["name"].strip().lower() == key
    ]


def _stack_file(folder: Path, name: str, run: str) -> Path:
    path = folder / "stack.yaml"
    path.write_text(
        f"name: {name}\n"
        "substrate: SrTiO3\n"
        f"growth_run: {run}\n"
        "layers:\n"
        "  - composition: SrRuO3\n"
        "    orientation: '001'\n"
        "  - composition: BaTiO3\n"
        "    orientation: '001'\n"
    )
    return path


def test_the_sdk_lists_our_growth_run_with_its_target_material(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str, tmp_path: Path
) -> None:
    outcome = growth_run_from_file(
        str(_stack_file(tmp_path, f"{unique} BTO/SRO", f"PLD {unique}")), credentials
    )
    samples = _sdk(sandbox).list_physical_samples()
    row = samples[samples["Physical Sample ID"] == outcome.physical_sample_id]
    assert len(row) == 1
    assert row.iloc[0]["Physical Sample Name"] == f"PLD {unique}"
    assert row.iloc[0]["Target Material"] == {
        "sample_name": f"{unique} BTO/SRO",
        "substrate": "SrTiO3",
    }


def test_the_sdks_resolve_by_name_finds_our_growth_run_and_creates_none(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str, tmp_path: Path
) -> None:
    outcome = growth_run_from_file(
        str(_stack_file(tmp_path, f"{unique} stack", f"MBE {unique}")), credentials
    )
    # As the instrument PC's upload would name it: other case, stray spaces.
    found_id, found_name = _sdk(sandbox)._resolve_physical_sample(f"  mbe {unique.upper()} ")
    assert found_id == outcome.physical_sample_id
    assert found_name.lower() == f"mbe {unique}".lower()
    assert len(_named(sandbox, f"MBE {unique}")) == 1


def test_our_task_adopts_a_growth_run_the_sdk_created_first(
    sandbox: SandboxHandle, credentials: AtomscaleCredentials, unique: str, tmp_path: Path
) -> None:
    # The instrument started streaming before anyone ran the flow: the SDK made the run.
    sdk_id, _ = _sdk(sandbox)._resolve_physical_sample(f"Sputter {unique}")
    outcome = growth_run_from_file(
        str(_stack_file(tmp_path, f"{unique} film", f"sputter {unique}")), credentials
    )
    assert outcome.physical_sample_id == sdk_id
    [stored] = _named(sandbox, f"Sputter {unique}")
    assert stored["sample_id"] == outcome.stack.sample_id
    samples = _sdk(sandbox).list_physical_samples()
    row = samples[samples["Physical Sample ID"] == sdk_id]
    assert row.iloc[0]["Target Material"]["sample_name"] == f"{unique} film"


@pytest.mark.parametrize("shape", ["object", "string"])
def test_the_sdk_and_our_task_race_for_one_name_and_agree(
    sandbox: SandboxHandle,
    credentials: AtomscaleCredentials,
    unique: str,
    shape: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK listed before our task created the name, so its create meets the 409:
    with the id in it, or (the plain-string shape) by listing again, as it documents."""
    client = _sdk(sandbox)
    listings: list[Any] = []
    real_list = client.list_physical_samples

    def listed_too_early() -> pd.DataFrame:
        listings.append(None)
        return pd.DataFrame(None) if len(listings) == 1 else real_list()

    @flow
    def ours() -> GrowthRun:
        return create_growth_run(credentials, f"Run {unique}")

    made = ours()
    monkeypatch.setattr(client, "list_physical_samples", listed_too_early)
    before = sandbox.physical_sample_conflict
    sandbox.physical_sample_conflict = shape  # type: ignore[assignment]
    try:
        found_id, _ = client._resolve_physical_sample(f"run {unique}")
    finally:
        sandbox.physical_sample_conflict = before
    assert found_id == made.id
    assert len(listings) == (1 if shape == "object" else 2)
    assert len(_named(sandbox, f"Run {unique}")) == 1
