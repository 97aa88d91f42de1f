"""The hand-off of a folder run's listing to the `stack-from-file` subflows it starts.

`stacks_from_folder` lists the account once for every file; each subflow it starts
takes what that listing found for its file instead of listing the account again.
A subflow's parameters are the public `stack_from_file(path, credentials)`, so the
listing travels beside them, in a context variable set around the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prefect_atomscale._stacks import ExistingStack, StackSpec

__all__ = ["listed_by_parent", "parent_listing"]

# The file's path, its spec, and what the folder run's listing found for it.
_PARENT_LISTING: ContextVar[tuple[str, StackSpec, ExistingStack] | None] = ContextVar(
    "prefect_atomscale_parent_listing", default=None
)


@contextmanager
def parent_listing(path: str, spec: StackSpec, existing: ExistingStack) -> Iterator[None]:
    """Within it, a `stack-from-file` run of `path` takes `existing` as its listing."""
    token = _PARENT_LISTING.set((path, spec, existing))
    try:
        yield
    finally:
        _PARENT_LISTING.reset(token)


def listed_by_parent(path: str, spec: StackSpec) -> ExistingStack | None:
    """What the folder run that started this subflow found for `path`, if it did.

    Only when the file still reads as the spec the folder run listed. A function of its
    own, so that the flow's code refers to no ContextVar: Dask and other pickling of
    the flow by value cannot pickle one.
    """
    known = _PARENT_LISTING.get()
    if known is None or known[0] != path or known[1] != spec:
        return None
    return known[2]
