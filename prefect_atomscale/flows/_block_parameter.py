"""`Credentials`: the flows' block parameter, which a deployment may give as a reference.

A workaround for the parameter schema Prefect's server checks a deployment's
parameters against; see `_SavedBlock`. The flows' signatures name `Credentials` so that
their run form offers a picker of saved Atomscale Credentials blocks.
"""

# No `from __future__ import annotations`: Prefect checks a flow's parameters with a
# model of its signature, and a served run could not resolve the string "Credentials".
from typing import Annotated

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from prefect_atomscale._credentials import AtomscaleCredentials

__all__ = ["Credentials"]


class _SavedBlock:
    """Parameter schema of a block parameter that a deployment can give as a reference.

    Prefect's server checks a deployment's parameters against
    `oneOf: [<the block's schema>, {"$ref": ...}]`. Every AtomscaleCredentials field is
    optional and extra keys are allowed, so a `{"$ref": ...}` object matches both and
    the server refuses it ("is valid under each of"). Saying that the block's own form
    has no key named `$ref` (with `propertyNames`: the server drops every `required`
    before it checks) leaves exactly one match. The UI still sees a block type slug and
    offers its picker of saved blocks.
    """

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        handler.resolve_ref_schema(schema)["propertyNames"] = {"not": {"const": "$ref"}}
        return schema


Credentials = Annotated[AtomscaleCredentials, _SavedBlock()]
