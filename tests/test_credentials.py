"""The AtomscaleCredentials block: secrecy, env fallback, checks, clients, save and load."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import uuid

import httpx
import prefect.settings
import pytest
from prefect import get_client
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from prefect_atomscale import AtomscaleConfigurationError, AtomscaleCredentials
from prefect_atomscale._credentials import DEFAULT_BASE_URL, USER_AGENT

SECRET = "sk-live-do-not-leak-42"


class TestStandardBlockSuite(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return AtomscaleCredentials

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        # Prefect's version downloads the logo, which needs the network; the logo is the
        # SVG the package ships, checked against the file in tests/test_block_form.py.
        assert str(block._logo_url).startswith("https://raw.githubusercontent.com/")
        assert str(block._logo_url).endswith("/prefect_atomscale/_assets/atomscale-logo.svg")


@pytest.mark.processes
@pytest.mark.integration
def test_block_type_slug_and_registration() -> None:
    assert AtomscaleCredentials.get_block_type_slug() == "atomscale-credentials"
    env = {**os.environ, "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value())}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_atomscale"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Atomscale Credentials" in result.stdout

    async def registered() -> tuple[str | None, str | None, str | None]:
        async with get_client() as client:
            block_type = await client.read_block_type_by_slug("atomscale-credentials")
            return block_type.description, block_type.code_example, block_type.documentation_url

    description, code_example, documentation_url = asyncio.run(registered())
    assert description == AtomscaleCredentials.get_description()
    assert code_example and 'AtomscaleCredentials.load("BLOCK_NAME")' in code_example
    assert documentation_url


@pytest.mark.processes
def test_importing_the_package_loads_only_the_block_and_the_errors() -> None:
    # Prefect imports every installed integration when it loads them (server start,
    # workers), so the package root must stay light: the tasks, clients and stack files,
    # and the Prefect engine modules they need, load on first use of their names.
    code = (
        "import sys, prefect, prefect_atomscale as p;"
        "before = set(sys.modules);"
        "print(sorted(m for m in sys.modules if m.startswith('prefect_atomscale')));"
        "p.create_layer;"
        "print(sorted(set(sys.modules) - before))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    eager, loaded_on_use = (eval(line) for line in result.stdout.splitlines())
    assert eager == [
        "prefect_atomscale",
        "prefect_atomscale._credentials",
        "prefect_atomscale._exceptions",
    ]
    assert {"prefect_atomscale._tasks", "prefect_atomscale._client", "prefect.tasks"} <= set(
        loaded_on_use
    )


def test_entry_point_points_at_the_package() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="prefect.collections")}
    assert names.get("prefect_atomscale") == "prefect_atomscale"


def test_secret_is_masked_everywhere() -> None:
    credentials = AtomscaleCredentials(api_key=SECRET)
    assert SECRET not in repr(credentials)
    assert SECRET not in str(credentials)
    assert SECRET not in str(credentials.model_dump())
    assert SECRET not in credentials.model_dump_json()
    assert credentials.api_key.get_secret_value() == SECRET


def test_env_fallback_follows_the_sdk_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMSCALE_API_KEY", "from-atomscale-var")
    assert AtomscaleCredentials().resolve().api_key.get_secret_value() == "from-atomscale-var"
    monkeypatch.setenv("AS_API_KEY", "from-as-var")
    assert AtomscaleCredentials().resolve().api_key.get_secret_value() == "from-as-var"
    # A key in the block wins over the environment.
    assert AtomscaleCredentials(api_key="own").resolve().api_key.get_secret_value() == "own"


def test_base_url_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AtomscaleCredentials(api_key="k").resolve().base_url == DEFAULT_BASE_URL
    monkeypatch.setenv("AS_API_ENDPOINT", "https://staging.example.org/")
    assert AtomscaleCredentials(api_key="k").resolve().base_url == "https://staging.example.org"
    explicit = AtomscaleCredentials(api_key="k", base_url="https://other.example.org")
    assert explicit.resolve().base_url == "https://other.example.org"


def test_no_key_anywhere_says_how_to_provide_one() -> None:
    with pytest.raises(AtomscaleConfigurationError) as info:
        AtomscaleCredentials().get_client()
    message = str(info.value)
    assert "ATOMSCALE_API_KEY" in message and "AtomscaleCredentials(api_key=" in message
    assert "an unsaved AtomscaleCredentials block has no api_key" in message


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_an_empty_or_blank_key_is_read_from_the_environment(
    empty: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None (older callers and saved documents), "" (the form's empty input) and blanks
    # all mean: read the environment.
    with pytest.raises(AtomscaleConfigurationError, match="has no api_key"):
        AtomscaleCredentials(api_key=empty).resolve()
    monkeypatch.setenv("ATOMSCALE_API_KEY", "from-env")
    resolved = AtomscaleCredentials(api_key=empty).resolve()
    assert resolved.api_key.get_secret_value() == "from-env"


@pytest.mark.parametrize("empty", [None, "", "  "])
def test_an_empty_or_blank_base_url_is_read_from_the_environment(
    empty: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert AtomscaleCredentials(api_key="k", base_url=empty).resolve().base_url == DEFAULT_BASE_URL
    monkeypatch.setenv("AS_API_ENDPOINT", "https://staging.example.org")
    resolved = AtomscaleCredentials(api_key="k", base_url=empty).resolve()
    assert resolved.base_url == "https://staging.example.org"


@pytest.mark.parametrize(
    ("base_url", "needle"),
    [
        ("api.atomscale.ai", "not an absolute http(s) URL"),
        ("ftp://api.atomscale.ai", "not an absolute http(s) URL"),
        ("https://user:pw@api.atomscale.ai", "without credentials"),
        ("http://api.atomscale.ai", "Refusing to send the API key over plain http"),
    ],
)
def test_unusable_base_urls(base_url: str, needle: str) -> None:
    with pytest.raises(AtomscaleConfigurationError) as info:
        AtomscaleCredentials(api_key=SECRET, base_url=base_url).get_client()
    assert needle in str(info.value)
    assert SECRET not in str(info.value)


def test_plain_http_is_fine_on_loopback_or_when_allowed() -> None:
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        AtomscaleCredentials(api_key="k", base_url=url).resolve()
    allowed = AtomscaleCredentials(
        api_key="k", base_url="http://proxy.lab.internal", allow_insecure_http=True
    )
    assert allowed.resolve().base_url == "http://proxy.lab.internal"


def test_clients_carry_key_user_agent_and_timeouts() -> None:
    credentials = AtomscaleCredentials(api_key=SECRET, timeout=12.5, connect_timeout=3.0)
    with credentials.get_client() as client:
        assert client.headers["X-API-KEY"] == SECRET
        assert client.headers["User-Agent"] == USER_AGENT
        assert USER_AGENT.startswith("prefect-atomscale/")
        assert client.timeout == httpx.Timeout(12.5, connect=3.0)
        assert str(client.base_url).rstrip("/") == DEFAULT_BASE_URL
        assert client.follow_redirects is False
        assert SECRET not in repr(client)


@pytest.mark.anyio
async def test_async_client_is_configured_the_same() -> None:
    async with AtomscaleCredentials(api_key=SECRET).get_async_client() as client:
        assert client.headers["X-API-KEY"] == SECRET
        assert client.headers["User-Agent"] == USER_AGENT


def test_fingerprint_separates_accounts_and_hides_the_key() -> None:
    a = AtomscaleCredentials(api_key=SECRET).account_fingerprint()
    assert a == AtomscaleCredentials(api_key=SECRET).account_fingerprint()
    assert a != AtomscaleCredentials(api_key=SECRET + "x").account_fingerprint()
    other_url = AtomscaleCredentials(api_key=SECRET, base_url="https://eu.example.org")
    assert a != other_url.account_fingerprint()
    assert SECRET not in a


def test_block_pickles_without_losing_the_key() -> None:
    credentials = AtomscaleCredentials(api_key=SECRET, base_url="http://127.0.0.1:9")
    clone = pickle.loads(pickle.dumps(credentials))
    assert clone.account_fingerprint() == credentials.account_fingerprint()


@pytest.mark.integration
def test_save_and_load_round_trip() -> None:
    name = f"atomscale-{uuid.uuid4().hex[:8]}"
    original = AtomscaleCredentials(api_key=SECRET, base_url="https://eu.example.org", timeout=7)
    original.save(name)
    loaded = AtomscaleCredentials.load(name)
    assert loaded.api_key.get_secret_value() == SECRET
    assert loaded.base_url == "https://eu.example.org"
    assert loaded.timeout == 7
    # Loaded and in-memory blocks are the same account: they share cache entries.
    assert loaded.account_fingerprint() == original.account_fingerprint()
