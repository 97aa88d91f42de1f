"""Create target materials from stack files, from a shell: the sandbox by default.

The flows themselves are in the package (`prefect_atomscale.flows`); this script runs
them. With no block given it starts the bundled sandbox and creates every example in
`flows/examples/`:

    python flows/stack_from_file.py                      # all of flows/examples
    python flows/stack_from_file.py --block atomscale path/to/stack.yaml

A file or folder that cannot be created is reported and the others go on. Its reason
is printed to stderr as the flow wrote it, e.g. every problem of an invalid file with
its line, with no Python traceback: a traceback means a bug. Prefect's own lines for
the failed run are shown too, also without a traceback; the run's log in the Prefect
UI keeps it.

Exit status:
    0: every stack was created, or was there already.
    1: a bug: Python's own status for an uncaught exception, shown with its traceback.
    2: the command line is wrong, or the block `--block` names cannot be loaded.
    3: a stack was not created, for the reason printed: an invalid file, a different
       stack of the same name in the account, a request the service refused, a folder
       with such files. Fix it and run again.
    4: the service could not be reached, or stayed busy, through every retry: run
       again later (3 wins when both happened).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from prefect.logging.configuration import ensure_logging_setup
from prefect.logging.handlers import PrefectConsoleHandler

from prefect_atomscale import AtomscaleCredentials, AtomscaleError
from prefect_atomscale.flows import StackFolderError, stack_from_file, stacks_from_folder

__all__ = ["main", "stack_from_file", "stacks_from_folder"]

EXAMPLES = Path(__file__).resolve().parent / "examples"

NOT_CREATED = 3
"""Exit status when a stack was not created for a reason its message gives."""
RUN_AGAIN_LATER = 4
"""Exit status when the service stayed unreachable or busy through every retry."""

# Failures a person can act on; their messages say what happened and what to do.
EXPECTED = (AtomscaleError, StackFolderError)


class _WithoutTraceback(logging.Filter):
    """Shows an expected failure's log line on the console without its traceback.

    The console handler is on the root logger, so a run's record reaches it after
    Prefect's API handler (on the run loggers) has sent it, traceback and all, to the
    run's log: taking the traceback off the record here changes only the console.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], EXPECTED):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_console() -> None:
    """Keep tracebacks of expected failures off the console (see `_WithoutTraceback`)."""
    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_WithoutTraceback())


@contextmanager
def _credentials_for_demo(block: str | None) -> Iterator[str]:
    """A saved block's name: the one given, or a new one for a sandbox started here."""
    if block:
        yield block
        return
    from atomscale_sandbox import run_sandbox

    with run_sandbox() as sandbox:
        name = f"atomscale-sandbox-{uuid.uuid4().hex[:8]}"
        AtomscaleCredentials(api_key=sandbox.api_key, base_url=sandbox.url).save(name)
        print(f"Started the Atomscale sandbox at {sandbox.url}; saved it as block {name!r}.")
        yield name


def _create(target: str, credentials: AtomscaleCredentials) -> int:
    """Create the stacks of a file or folder; its exit status (0 or an expected failure's)."""
    try:
        if Path(target).is_dir():
            for outcome in stacks_from_folder(target, credentials):
                print(f"{Path(outcome.path).name}: {outcome.status} {outcome.message}")
        else:
            outcome = stack_from_file(target, credentials)
            print(f"{Path(outcome.path).name}: {outcome.status} {outcome.message}")
    except EXPECTED as exc:
        print(exc, file=sys.stderr)
        transient = isinstance(exc, AtomscaleError) and exc.transient
        return RUN_AGAIN_LATER if transient else NOT_CREATED
    return 0


def main(argv: list[str] | None = None) -> int:
    """Create the stacks of a folder or of given files, against the sandbox by default."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Exit status:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", help="stack files or folders (default: the examples)")
    parser.add_argument("--block", metavar="NAME", help="use a saved AtomscaleCredentials block")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _quiet_console()
    with _credentials_for_demo(args.block) as block:
        try:
            credentials = cast(AtomscaleCredentials, AtomscaleCredentials.load(block))
        except ValueError as exc:  # no block of that name: Prefect says so
            parser.error(f"--block {block}: {exc}")
        # One file that cannot be created never holds back the others.
        statuses = {_create(target, credentials) for target in args.paths or [str(EXAMPLES)]}
    # A file to fix is worth more than a hint to run again later, which would not fix it.
    return next((status for status in (NOT_CREATED, RUN_AGAIN_LATER) if status in statuses), 0)


if __name__ == "__main__":
    raise SystemExit(main())
