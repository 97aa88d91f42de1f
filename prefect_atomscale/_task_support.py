"""What the uncached tasks share: their `@task` settings, their run names and their client.

The read, update and growth-run tasks (`_read_tasks`, `_growth_run_tasks`) are not
cached, since a read must see the service as it is now and their writes are made
exactly once by other means (the service's own name rule, the write protocol). They
retry transient faults exactly as the create tasks do (see `_retries`), name their runs
after a shortened argument, and say what they could not do when the credentials cannot
be used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run as current_task_run

from prefect_atomscale._client import AsyncAtomscaleClient, AtomscaleClient
from prefect_atomscale._credentials import AtomscaleCredentials
from prefect_atomscale._exceptions import AtomscaleConfigurationError
from prefect_atomscale._pool import async_client_for, client_for
from prefect_atomscale._retries import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAYS,
    RETRY_JITTER_FACTOR,
)

__all__ = [
    "async_client_to",
    "check_credentials",
    "client_to",
    "listing_purpose",
    "listing_run_name",
    "shortened",
    "uncached_task_options",
]


def uncached_task_options(
    name: str, condition: Callable[..., Any], run_name: Callable[[], str]
) -> dict[str, Any]:
    """The `@task` settings of an uncached task: the create tasks' retries, no cache."""
    return {
        "name": name,
        "task_run_name": run_name,
        "retries": DEFAULT_RETRIES,
        "retry_delay_seconds": DEFAULT_RETRY_DELAYS,
        "retry_jitter_factor": RETRY_JITTER_FACTOR,
        "retry_condition_fn": condition,
        "cache_policy": NO_CACHE,
    }


def shortened(value: object, limit: int = 40) -> str:
    """An argument as a run name shows it: trimmed, and cut to `limit` characters.

    Run names are shown in the UI and stored by Prefect: a huge input stays out of them.
    """
    text = str(value).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listing_run_name(task_name: str) -> Callable[[], str]:
    """The run name of a listing task: its name, then the `name` it looks for, if any."""

    def run_name() -> str:
        name = current_task_run.parameters.get("name")
        return task_name + (f"-{shortened(name)}" if name is not None else "")

    return run_name


def listing_purpose(records: str, name: str | None) -> str:
    """What a listing task reads, quoted in its errors: `records`, then the name asked for."""
    return f"listing {records}" + (f" named {name!r}" if name is not None else "")


def _cannot(what: str, error: AtomscaleConfigurationError) -> AtomscaleConfigurationError:
    return AtomscaleConfigurationError(f"Cannot {what}: {error}")


def check_credentials(credentials: AtomscaleCredentials, what: str) -> None:
    """Fail before any request when the credentials cannot be used, naming `what` was to be done.

    Why: steps before the first request (the ownership mark) read the key too, and
    their error would not say what the task was doing.
    """
    try:
        credentials.key_fingerprint()
    except AtomscaleConfigurationError as exc:
        raise _cannot(what, exc) from None


def client_to(credentials: AtomscaleCredentials, what: str) -> AtomscaleClient:
    """This process's shared client; unusable credentials fail naming `what` was to be done."""
    try:
        return client_for(credentials)
    except AtomscaleConfigurationError as exc:
        raise _cannot(what, exc) from None


def async_client_to(credentials: AtomscaleCredentials, what: str) -> AsyncAtomscaleClient:
    """Async twin of `client_to`: the running event loop's shared async client."""
    try:
        return async_client_for(credentials)
    except AtomscaleConfigurationError as exc:
        raise _cannot(what, exc) from None
