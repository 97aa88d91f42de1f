"""The credentials block as the Prefect UI shows it, read back from a real Prefect server.

The form: `api_key` and `base_url` are plain string inputs (no "None" toggle), empty by
default, and empty means the environment; documents saved with nulls under the earlier
schema still load; the key, masked once saved, survives an edit that sends the mask
back. The card: a logo the package ships, a short description, and a code example that
calls a task, both stored as written. Errors of clients built from a saved block name
that block and its base URL.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import re
import ssl
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prefect import flow, get_client
from prefect.client.schemas.actions import (
    BlockDocumentCreate,
    BlockDocumentUpdate,
    BlockSchemaCreate,
)
from prefect.client.schemas.objects import BlockSchema, BlockType

import prefect_atomscale
from atomscale_sandbox import SandboxHandle
from prefect_atomscale import (
    AtomscaleAuthError,
    AtomscaleClient,
    AtomscaleConfigurationError,
    AtomscaleConnectionError,
    AtomscaleCredentials,
    AtomscaleError,
    create_target_material,
)
from prefect_atomscale._credentials import LOGO_URL

from conftest import KEY_A  # isort: skip
from helpers import free_port, only_material  # isort: skip

SLUG = "atomscale-credentials"
WRONG_KEY = "wrong-key-for-the-form-tests-0001"
PACKAGE = Path(prefect_atomscale.__file__).resolve().parent
OFFLINE_LOGO = PACKAGE.parent / "scripts" / "offline_logo.py"
LOGO = PACKAGE / "_assets" / "atomscale-logo.svg"
SVG = "{http://www.w3.org/2000/svg}"

# The two fields as the block's schema declared them before they became plain strings:
# optional, so the UI put them behind a "None" toggle. Documents saved then hold nulls.
OLD_FIELDS = {
    "api_key": {
        "anyOf": [{"format": "password", "type": "string", "writeOnly": True}, {"type": "null"}],
        "default": None,
        "title": "API key",
    },
    "base_url": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
}


def _name() -> str:
    return f"form-{uuid.uuid4().hex[:10]}"


async def _registered() -> tuple[BlockType, BlockSchema]:
    await AtomscaleCredentials.aregister_type_and_schema()
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug(SLUG)
        schema = await client.read_block_schema_by_checksum(
            AtomscaleCredentials._calculate_schema_checksum()
        )
    return block_type, schema


def _saved(name: str, **fields: Any) -> AtomscaleCredentials:
    AtomscaleCredentials(**fields).save(name)
    return AtomscaleCredentials.load(name)


def _error_of(call: Any) -> AtomscaleError:
    try:
        call()
    except AtomscaleError as exc:
        return exc
    raise AssertionError("no error")


# --- The block type and its schema, as the server keeps them ----------------------------


@pytest.mark.integration
def test_the_registered_block_type_has_the_logo_description_and_a_task_in_its_example() -> None:
    block_type, _ = asyncio.run(_registered())
    assert str(block_type.logo_url) == LOGO_URL
    assert block_type.description and "environment" in block_type.description
    example = block_type.code_example or ""
    assert 'AtomscaleCredentials.load("BLOCK_NAME")' in example
    assert "@flow" in example and "create_layer(" in example
    assert block_type.documentation_url


@pytest.mark.integration
def test_the_server_keeps_the_cards_text_as_written_and_short() -> None:
    # The server stores a block type's description and code example HTML-escaped, and
    # both UIs show what it stores as text: a `->` read `-&gt;` in the example.
    block_type, _ = asyncio.run(_registered())
    assert block_type.description == AtomscaleCredentials.get_description()
    assert block_type.code_example == AtomscaleCredentials.get_code_example()
    # The classic UI's block form shows the description in a side card six lines of
    # about 27 characters high and cuts the rest (it stopped at "AS_API_KEY /").
    assert len(block_type.description) <= 135


def test_an_edit_that_sends_the_masked_key_back_keeps_the_key(sandbox: SandboxHandle) -> None:
    # What both UIs' edit forms do: show the saved key as the server's mask, and send
    # every field back on Save, the mask included when the key was not retyped.
    name = _name()
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(name)

    async def edit_as_the_form_does() -> None:
        async with get_client() as client:
            shown = await client.read_block_document_by_name(
                name, block_type_slug=SLUG, include_secrets=False
            )
            assert shown.data["api_key"] == "********"
            assert shown.id is not None
            await client.update_block_document(
                shown.id,
                BlockDocumentUpdate(
                    data={**shown.data, "timeout": 12.0}, merge_existing_data=False
                ),
            )

    asyncio.run(edit_as_the_form_does())
    edited = AtomscaleCredentials.load(name)
    assert edited.api_key.get_secret_value() == KEY_A and edited.timeout == 12.0
    with AtomscaleClient.from_credentials(edited) as client:
        assert isinstance(client.list_rows(), list)


@pytest.mark.integration
def test_key_and_url_are_plain_string_inputs_in_the_registered_schema() -> None:
    _, schema = asyncio.run(_registered())
    properties = schema.fields["properties"]
    api_key, base_url = properties["api_key"], properties["base_url"]
    for field in (api_key, base_url):
        assert field["type"] == "string"
        assert "anyOf" not in field and "oneOf" not in field
        assert field["default"] == ""
        assert "null" not in str(field)
    assert api_key["format"] == "password" and api_key["writeOnly"] is True
    assert "format" not in base_url
    assert schema.fields["secret_fields"] == ["api_key"]


# --- Empty means the environment: saved now, or saved with nulls under the old schema ---


def test_a_block_saved_empty_stores_empty_strings_and_reads_the_environment(
    sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _name()
    AtomscaleCredentials().save(name)

    async def stored() -> dict[str, Any]:
        async with get_client() as client:
            document = await client.read_block_document_by_name(
                name, block_type_slug=SLUG, include_secrets=True
            )
        return document.data

    data = asyncio.run(stored())
    assert data["api_key"] == "" and data["base_url"] == ""

    monkeypatch.setenv("ATOMSCALE_API_KEY", KEY_A)
    monkeypatch.setenv("AS_API_ENDPOINT", sandbox.url)
    loaded = AtomscaleCredentials.load(name)
    assert loaded.resolve().base_url == sandbox.url
    with AtomscaleClient.from_credentials(loaded) as client:
        assert isinstance(client.list_rows(), list)


def test_a_document_saved_with_nulls_under_the_old_schema_still_loads(
    sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _name()

    async def save_as_before() -> None:
        block_type, schema = await _registered()
        fields = {**schema.fields, "properties": {**schema.fields["properties"], **OLD_FIELDS}}
        async with get_client() as client:
            old = await client.create_block_schema(
                BlockSchemaCreate(fields=fields, block_type_id=block_type.id, version="0.1.0")
            )
            await client.create_block_document(
                BlockDocumentCreate(
                    name=name,
                    data={"api_key": None, "base_url": None, "timeout": 9.0},
                    block_schema_id=old.id,
                    block_type_id=block_type.id,
                )
            )
        assert old.checksum != schema.checksum

    asyncio.run(save_as_before())
    loaded = AtomscaleCredentials.load(name)
    assert loaded.api_key.get_secret_value() == "" and loaded.base_url == ""
    assert loaded.timeout == 9.0
    monkeypatch.setenv("AS_API_KEY", KEY_A)
    monkeypatch.setenv("AS_API_ENDPOINT", sandbox.url)
    with AtomscaleClient.from_credentials(loaded) as client:
        assert isinstance(client.list_rows(), list)


def test_python_callers_may_still_pass_none() -> None:
    credentials = AtomscaleCredentials(api_key=None, base_url=None)
    assert credentials.api_key.get_secret_value() == "" and credentials.base_url == ""


# --- Errors name the block and its base URL ----------------------------------------------


def test_a_refused_key_names_the_block_and_its_base_url(sandbox: SandboxHandle) -> None:
    name = _name()
    loaded = _saved(name, api_key=WRONG_KEY, base_url=sandbox.url)
    with AtomscaleClient.from_credentials(loaded) as client:
        error = _error_of(client.list_rows)
    assert isinstance(error, AtomscaleAuthError) and error.status_code == 401
    message = str(error)
    assert (
        f"Put a current key from the Atomscale dashboard in the AtomscaleCredentials block "
        f"{name!r} (base URL {sandbox.url})." in message
    )
    assert WRONG_KEY not in message


def test_a_refused_key_from_the_environment_names_the_variable_and_the_block(
    sandbox: SandboxHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _name()
    loaded = _saved(name, base_url=sandbox.url)
    monkeypatch.setenv("AS_API_KEY", WRONG_KEY)
    with AtomscaleClient.from_credentials(loaded) as client:
        message = str(_error_of(client.list_rows))
    assert (
        f"in AS_API_KEY, where the key was read from because the AtomscaleCredentials block "
        f"{name!r} (base URL {sandbox.url}) has no api_key" in message
    )
    assert WRONG_KEY not in message


def test_a_task_failing_on_a_refused_key_names_the_block_it_loaded(
    sandbox: SandboxHandle, unique: str
) -> None:
    # Through the shared pool, as tasks build their clients; two blocks of one account
    # each get their own name in the message.
    first, second = _name(), _name()
    loaded = [_saved(name, api_key=WRONG_KEY, base_url=sandbox.url) for name in (first, second)]

    @flow
    def attempt(credentials: AtomscaleCredentials) -> BaseException | None:
        state = create_target_material(credentials, unique, "SrTiO3", return_state=True)
        value = state.result(raise_on_failure=False)
        return value if isinstance(value, BaseException) else None

    for name, credentials in zip((first, second), loaded, strict=True):
        error = attempt(credentials)
        assert isinstance(error, AtomscaleAuthError), error
        assert f"the AtomscaleCredentials block {name!r} (base URL {sandbox.url})" in str(error)


@pytest.mark.integration
def test_a_connection_error_names_the_base_url_and_the_block() -> None:
    name = _name()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    loaded = _saved(name, api_key=WRONG_KEY, base_url=url)
    with AtomscaleClient.from_credentials(loaded) as client:
        error = _error_of(client.list_rows)
    assert isinstance(error, AtomscaleConnectionError)
    message = str(error)
    assert f"Could not connect to {url} (GET /target-materials/" in message
    assert f"(the URL is the base_url of the AtomscaleCredentials block {name!r})" in message
    assert WRONG_KEY not in message


@pytest.mark.integration
def test_a_missing_key_names_the_saved_block_to_put_it_in() -> None:
    name = _name()
    loaded = _saved(name, base_url="https://api.atomscale.ai")
    with pytest.raises(AtomscaleConfigurationError) as info:
        loaded.get_client()
    message = str(info.value)
    assert f"the AtomscaleCredentials block {name!r} has no api_key" in message
    assert f"into the block {name!r} (Prefect UI, Blocks)" in message


@pytest.mark.integration
def test_a_bad_base_url_names_the_block_or_says_it_is_unsaved() -> None:
    name = _name()
    loaded = _saved(name, api_key=WRONG_KEY, base_url="api.atomscale.ai")
    with pytest.raises(AtomscaleConfigurationError) as saved:
        loaded.resolve()
    assert f"(the base_url of the AtomscaleCredentials block {name!r})" in str(saved.value)
    with pytest.raises(AtomscaleConfigurationError) as unsaved:
        AtomscaleCredentials(api_key=WRONG_KEY, base_url="api.atomscale.ai").resolve()
    assert "(the base_url of an unsaved AtomscaleCredentials block)" in str(unsaved.value)
    assert WRONG_KEY not in str(saved.value) + str(unsaved.value)


# --- The code example runs; the logo is a clean SVG the package ships --------------------


def test_the_code_example_runs_against_the_sandbox(sandbox: SandboxHandle, unique: str) -> None:
    name = _name()
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save(name)
    example = AtomscaleCredentials.get_code_example() or ""
    code = example.removeprefix("```python\n").removesuffix("```")
    assert code != example and '"BTO on STO #12"' in code
    # The UI puts the block's name in; the target material gets one no other test uses.
    code = code.replace("BLOCK_NAME", name).replace('"BTO on STO #12"', repr(unique))
    exec(compile(code, "<code example>", "exec"), {"__name__": "example"})
    rows = sandbox.layer_rows(organisation="lab-a", sample_id=only_material(sandbox, unique))
    assert [(row["layer_id"], row["composition_string"]) for row in rows] == [(1, "BaTiO3")]


def test_the_logo_is_a_small_self_contained_svg_shipped_at_the_logo_urls_path() -> None:
    assert urlsplit(LOGO_URL).scheme == "https"
    shipped = LOGO.relative_to(PACKAGE.parent).as_posix()
    assert urlsplit(LOGO_URL).path.endswith(f"/main/{shipped}")
    data = LOGO.read_bytes()
    assert len(data) < 2048
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    assert len((root.get("viewBox") or "").split()) == 4
    assert len(root.findall(f".//{SVG}path")) >= 3
    # No external references: no links, images, scripts or fetched styles.
    for element in root.iter():
        assert element.tag not in (f"{SVG}image", f"{SVG}script", f"{SVG}use", f"{SVG}style")
        for attribute, value in element.attrib.items():
            assert "href" not in attribute, attribute
            assert "url(" not in value and "://" not in value, value


def test_offline_logo_serves_the_shipped_file_where_chromium_is_sent() -> None:
    spec = importlib.util.spec_from_file_location("offline_logo", OFFLINE_LOGO)
    assert spec and spec.loader
    offline_logo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline_logo)
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # the certificate is self-signed
    logo = urlsplit(LOGO_URL)

    with offline_logo.serve_logo() as flags:
        rule, ignore = flags
        assert ignore == "--ignore-certificate-errors"
        found = re.fullmatch(rf"--host-resolver-rules=MAP {logo.hostname} 127\.0\.0\.1:(\d+)", rule)
        assert found, rule
        connection = http.client.HTTPSConnection(
            "127.0.0.1", int(found.group(1)), context=unverified, timeout=10
        )
        try:
            connection.request("GET", logo.path, headers={"Host": str(logo.hostname)})
            reply = connection.getresponse()
            assert (reply.status, reply.getheader("Content-Type")) == (200, "image/svg+xml")
            assert reply.read() == LOGO.read_bytes()
            connection.request("GET", "/elsewhere.svg")
            assert connection.getresponse().status == 404
        finally:
            connection.close()
