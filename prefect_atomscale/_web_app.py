"""Where a target material is in the Atomscale web app, for "Open in Atomscale" links.

The web app's addresses are not documented, so `web_app_url` is a guess, kept in this
one function: the stack-file flows' artifacts, their run's state message and the
events all link through it, and change together if the rule does.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["web_app_url"]


def web_app_url(base_url: str, sample_id: int) -> str:
    """The page of target material `sample_id` in the Atomscale web app: a guess.

    The web app's addresses are not documented. The rule: the API at `api.<domain>`
    has its web app at `app.<domain>` (`https://api.atomscale.ai` ->
    `https://app.atomscale.ai`, where the SDK's quickstart sends users to log in), and a
    target material's page there is `/target-materials/<sample_id>`, the API's own path
    for target materials. Any other base URL (a staging server, a proxy, the sandbox) is
    taken to serve the web app itself, on the same path: a guess too, and the sandbox
    serves no such page. The path of the base URL is dropped; a user or password in it
    never reaches the link.

    Args:
        base_url: The API root, e.g. `https://api.atomscale.ai`.
        sample_id: The target material.

    Returns:
        E.g. `https://app.atomscale.ai/target-materials/42`.
    """
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower()
    if host.startswith("api."):
        host = "app." + host.removeprefix("api.")
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'https'}://{host}{port}/target-materials/{sample_id}"
