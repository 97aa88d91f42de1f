"""The cheaper hot path keeps its guarantees: fresh accounts, locks across processes.

`_pool.account_of` remembers a block's resolved account; a key read from the
environment, a renamed block or a changed field must give a fresh one. The local slot
locks call `flock` directly: another process must still be kept out while this one
holds a slot, and get it once it is given back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prefect_atomscale import AtomscaleConfigurationError, AtomscaleCredentials
from prefect_atomscale._locks._files import FileSlots
from prefect_atomscale._pool import account_of

_OTHER_PROCESS_TAKES = """
import sys
from pathlib import Path
from prefect_atomscale._locks._files import FileSlots
slots = FileSlots(Path(sys.argv[1]))
taken = slots.try_take(int(sys.argv[2]))
if taken:
    slots.give_back(int(sys.argv[2]))
print("taken" if taken else "refused")
"""


def _other_process_takes(directory: Path, index: int) -> str:
    return subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS_TAKES, str(directory), str(index)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def test_a_key_from_the_environment_is_read_again_when_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = AtomscaleCredentials(base_url="http://127.0.0.1:8000")
    monkeypatch.setenv("ATOMSCALE_API_KEY", "first-key")
    first = account_of(credentials)
    monkeypatch.setenv("ATOMSCALE_API_KEY", "second-key")
    second = account_of(credentials)

    assert first.fingerprint != second.fingerprint
    assert second.settings.api_key.get_secret_value() == "second-key"
    monkeypatch.delenv("ATOMSCALE_API_KEY")
    with pytest.raises(AtomscaleConfigurationError):
        account_of(credentials)  # no key anywhere: never answered from memory


def test_a_changed_field_gives_a_fresh_account() -> None:
    credentials = AtomscaleCredentials(api_key="k" * 20, base_url="http://127.0.0.1:8000")
    before = account_of(credentials)
    credentials.base_url = "http://localhost:9000"
    after = account_of(credentials)

    assert before.fingerprint != after.fingerprint
    assert after.settings.base_url == "http://localhost:9000"
    assert after.service == "http://loopback:9000"


@pytest.mark.processes
def test_another_process_cannot_take_a_slot_held_here(tmp_path: Path) -> None:
    slots = FileSlots(tmp_path / "material")
    assert slots.try_take(7)
    try:
        assert _other_process_takes(tmp_path / "material", 7) == "refused"
        assert _other_process_takes(tmp_path / "material", 8) == "taken"
    finally:
        slots.give_back(7)
    assert _other_process_takes(tmp_path / "material", 7) == "taken"
