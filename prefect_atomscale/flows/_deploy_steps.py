"""A `prefect deploy` build step: the saved credentials block as a reference by id.

Prefect's run form (both UIs) shows a block parameter's default selected in its picker
only when the deployment stores it as `{"$ref": {"block_document_id": ...}}`; a
reference by name (`block_document_slug`) runs the same but leaves the picker empty.
`prefect.yaml` cannot write an id it does not know, so this step looks it up when each
deployment is created, and the deployment's parameters take the step's output.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleConfigurationError

__all__ = ["credentials_block_reference"]


def credentials_block_reference(block_name: str = "atomscale") -> dict[str, Any]:
    """Look up a saved `AtomscaleCredentials` block; return a reference to it by id.

    Meant as a `prefect.yaml` build step, so that each deployment stores its
    `credentials` as the reference the UI's Custom run form shows selected: the step
    runs in `prefect deploy`, before each deployment is created, and the deployment's
    parameters take its output, here for a step with the id `atomscale-block`:

    ```yaml
    build:
      - prefect_atomscale.flows.credentials_block_reference:
          id: atomscale-block
          block_name: atomscale
    deployments:
      - name: nightly
        parameters:
          credentials: "{{ atomscale-block.credentials }}"
    ```

    The output is `{"credentials": {"$ref": {"block_document_id": "<id>"}}}`. Only the
    block's id is read, never its key; the reference holds nothing else.
    Editing the block later (in the UI or with `save(..., overwrite=True)`) keeps its
    id. A block deleted and saved anew has a new one: deploy again.

    Args:
        block_name: The name the block was saved under.

    Returns:
        The deployment parameter under `credentials`, as Prefect loads it at run start.

    Raises:
        AtomscaleConfigurationError: No `AtomscaleCredentials` block of that name is
            saved on the Prefect server; the message says how to save it.

    Example:
        ```python
        from prefect_atomscale import AtomscaleConfigurationError
        from prefect_atomscale.flows import credentials_block_reference

        reference = credentials_block_reference("atomscale")["credentials"]
        print(list(reference["$ref"]))  # ['block_document_id']
        try:
            credentials_block_reference("not-saved-yet")
        except AtomscaleConfigurationError as exc:
            print(exc)  # No AtomscaleCredentials block named 'not-saved-yet' is saved ...
        ```
    """
    slug = AtomscaleCredentials.get_block_type_slug()
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(block_name, slug, include_secrets=False)
        except ObjectNotFound:
            raise AtomscaleConfigurationError(
                f"No AtomscaleCredentials block named {block_name!r} is saved on the Prefect "
                f"server at {str(client.api_url).rstrip('/')}. Save it first, in Python with "
                f"AtomscaleCredentials(api_key=...).save({block_name!r}) or in the UI under "
                "Blocks -> Atomscale Credentials (README, 'Save your credentials once'), "
                "then deploy again: a deployment refers to the block by its id."
            ) from None
    return {"credentials": {"$ref": {"block_document_id": str(document.id)}}}
