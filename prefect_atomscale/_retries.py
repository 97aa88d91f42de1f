"""What the tasks retry and how long they wait, expressed in Prefect's own retry settings.

Only transient faults are retried: no connection, a timeout, a dropped connection, 408,
429 and 5xx, i.e. errors whose class has `transient = True`. Everything else (bad
input, 4xx, a reply we cannot use) fails on the first attempt. Delays grow exponentially
with jitter; a 429's `Retry-After` is honoured by waiting it out in the retry condition,
before Prefect's own backoff starts, since Prefect's delays cannot depend on the error.
"""

from __future__ import annotations

import asyncio
from time import sleep
from typing import Any

from prefect.tasks import exponential_backoff

from prefect_atomscale._exceptions import AtomscaleError, AtomscaleRateLimitError

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_DELAYS",
    "MAX_RETRY_AFTER",
    "RETRY_JITTER_FACTOR",
    "aretry_if_transient",
    "retry_if_transient",
]

DEFAULT_RETRIES = 4
# 0.5, 1, 2, 4 s: about 7.5 s in all, long enough to ride out a restart or a brief
# overload, short enough that a real outage fails the flow quickly.
DEFAULT_RETRY_DELAYS: list[float] = exponential_backoff(backoff_factor=0.5)(DEFAULT_RETRIES)
RETRY_JITTER_FACTOR = 0.5
# A Retry-After longer than this is capped: a flow should not hang for an hour on one hint.
MAX_RETRY_AFTER = 60.0


def _wait_before_retry(state: Any) -> float | None:
    """Return None if the failure must not be retried, else extra seconds to wait first."""
    error = getattr(state, "data", None)
    if not isinstance(error, AtomscaleError) or not error.transient:
        return None
    if isinstance(error, AtomscaleRateLimitError) and error.retry_after:
        return min(error.retry_after, MAX_RETRY_AFTER)
    return 0.0


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn` for sync tasks: retry transient errors only.

    Args:
        task: The task (unused; part of Prefect's signature).
        task_run: The task run (unused).
        state: The failed state; its data is the raised exception.

    Returns:
        True to retry.
    """
    wait = _wait_before_retry(state)
    if wait is None:
        return False
    if wait:
        sleep(wait)
    return True


async def aretry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn` for async tasks: as `retry_if_transient`, awaiting.

    Args:
        task: The task (unused; part of Prefect's signature).
        task_run: The task run (unused).
        state: The failed state; its data is the raised exception.

    Returns:
        True to retry.
    """
    wait = _wait_before_retry(state)
    if wait is None:
        return False
    if wait:
        await asyncio.sleep(wait)
    return True
