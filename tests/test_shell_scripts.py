"""`flows/stack_from_file.py` from a shell: a failure's reason, no traceback, an exit status."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import prefect.settings
import pytest
from conftest import KEY_A
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from test_artifacts import log_lines

from atomscale_sandbox import SandboxHandle
from flows import stack_from_file as script
from prefect_atomscale import AtomscaleCredentials, AtomscaleServerError, StackConflictError
from prefect_atomscale.flows import StackFolderError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "flows/stack_from_file.py"


def run_script(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python flows/stack_from_file.py ARGS` from the repository root, on the tests' server.

    The environment is a shell's: no Prefect settings but the server's address, and a home
    of its own.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    env["HOME"] = env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = str(prefect.settings.PREFECT_API_URL.value())
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.processes
def test_an_invalid_file_prints_its_problems_and_no_traceback_and_the_others_go_on(
    tmp_path: Path, sandbox: SandboxHandle, unique: str
) -> None:
    block = f"atomscale-{uuid.uuid4().hex[:8]}"
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(block)
    bad = tmp_path / f"bad-{unique}.csv"
    bad.write_text("# name: x\n# substrate: SrTiO3\nlayer;composition\n1;BaTiO4x\n")
    good = tmp_path / "good.yaml"
    good.write_text(f"name: {unique}\nsubstrate: SrTiO3\nlayers:\n  - composition: BaTiO3\n")

    result = run_script(tmp_path / "home", "--block", block, str(bad), str(good))

    output = result.stdout + result.stderr
    assert result.returncode == script.NOT_CREATED, output
    assert "Traceback" not in output
    # The reason, as the flow wrote it, printed by the script on lines of its own...
    reason = f"{bad}: layer L1 (line 4), field 'composition': invalid composition 'BaTiO4x'"
    assert any(line.startswith(reason) for line in result.stderr.splitlines()), output
    assert "^. Nothing was sent; fix the file and run again.\n" in result.stderr
    # ...and in the run's own ERROR line, as Prefect logs it to the console.
    assert f"ERROR   | Flow run 'stack-from-file-{bad.name}' - {reason}" in result.stderr
    # The file after it was created all the same.
    assert "good.yaml: created 1 created now" in result.stdout
    assert sandbox.count_layers(organisation="lab-a") >= 1
    # Only the console is spared the traceback: the run's log in the UI keeps it.
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=[f"stack-from-file-{bad.name}"])
            )
        )
    logged = log_lines(run.id, until="Encountered exception")
    assert any("Traceback (most recent call last)" in line for line in logged)


@pytest.mark.integration
@pytest.mark.processes
def test_a_block_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = run_script(tmp_path / "home", "--block", f"no-{uuid.uuid4().hex[:8]}", "x.yaml")
    assert result.returncode == 2
    assert "error: --block no-" in result.stderr
    assert "Unable to find block document" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (StackConflictError("s.yaml", "film", ["L1 differs"]), script.NOT_CREATED),
        (StackFolderError("1 of 2 stack files in stacks were not created"), script.NOT_CREATED),
        (AtomscaleServerError("the service answered 503 through every retry"), 4),
    ],
)
def test_an_expected_failure_is_printed_with_the_exit_status_for_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    raised: Exception,
    status: int,
) -> None:
    def fails(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr(script, "stack_from_file", fails)
    monkeypatch.setattr(script, "stacks_from_folder", fails)
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url="http://127.0.0.1:9")
    target = tmp_path if isinstance(raised, StackFolderError) else tmp_path / "s.yaml"
    assert script._create(str(target), credentials) == status
    assert capsys.readouterr().err == f"{raised}\n"


def test_a_bug_is_not_taken_for_an_expected_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def bug(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(script, "stack_from_file", bug)
    credentials = AtomscaleCredentials(api_key=KEY_A, base_url="http://127.0.0.1:9")
    with pytest.raises(KeyError):  # so Python prints its traceback and exits with 1
        script._create(str(tmp_path / "s.yaml"), credentials)
