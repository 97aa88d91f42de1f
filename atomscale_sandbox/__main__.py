"""Command line: serve the sandbox in the foreground until Ctrl-C.

Run `python -m atomscale_sandbox --help` for the options. Keys come from
`--api-key`, else from the environment variable `ATOMSCALE_SANDBOX_API_KEYS`
(comma-separated), else one is generated and printed once at start-up. A key written
`KEY=ORG` acts for organisation ORG; a plain `KEY` for the default one, "sandbox".
`--fill ORG=ROWS` gives an organisation that many listed rows before serving, as a
large shared account has.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sqlite3
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from atomscale_sandbox._config import DEFAULT_ORGANISATION, ApiKeyGrant, SandboxConfig
from atomscale_sandbox._connections import HTTP_PARSERS
from atomscale_sandbox._faults import CHANCE_KINDS, FaultConfig, FaultKind
from atomscale_sandbox._server import run_sandbox

__all__ = ["main"]

KEYS_VARIABLE = "ATOMSCALE_SANDBOX_API_KEYS"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m atomscale_sandbox",
        description=(
            "Serve a local stand-in for the Atomscale target-materials and physical-samples API."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY[=ORG]",
        help=(
            f"an API key to accept, for organisation ORG (default {DEFAULT_ORGANISATION!r}); "
            f"repeatable; default: ${KEYS_VARIABLE}, else a new one"
        ),
    )
    parser.add_argument(
        "--fill",
        action="append",
        default=[],
        metavar="[ORG=]ROWS",
        help="add ROWS listed rows (target materials of 10 layers) to ORG before serving",
    )
    parser.add_argument(
        "--db", metavar="PATH", help="SQLite file to keep records in (default: temporary)"
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="probability in [0, 1] that a write fails (default: 0)",
    )
    parser.add_argument(
        "--faults",
        metavar="KIND,KIND",
        default=",".join(CHANCE_KINDS),
        help=(
            f"fault kinds to draw from (default: {','.join(CHANCE_KINDS)}; "
            f"all: {','.join(FaultKind)})"
        ),
    )
    parser.add_argument(
        "--late-commit-seconds",
        type=float,
        default=0.5,
        metavar="S",
        help="how long after the client gave up a commit_late fault commits (default: 0.5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    parser.add_argument(
        "--physical-sample-conflict",
        choices=("object", "string"),
        default="object",
        help=(
            "shape of the 409 for a taken physical-sample name: object, with the existing "
            "sample's id (default), or string, the message alone"
        ),
    )
    parser.add_argument(
        "--http",
        choices=HTTP_PARSERS,
        default="auto",
        help="HTTP/1.1 parser (default: auto, httptools if installed, else h11)",
    )
    return parser


def _keys(given: Sequence[str] | None) -> tuple[list[str], bool]:
    """The API keys to serve, and whether they were generated here."""
    if given:
        return list(given), False
    from_environment = [
        key.strip() for key in os.environ.get(KEYS_VARIABLE, "").split(",") if key.strip()
    ]
    if from_environment:
        return from_environment, False
    return [secrets.token_urlsafe(24)], True


def _grants(keys: Sequence[str]) -> dict[str, ApiKeyGrant | str]:
    """`KEY=ORG` acts for ORG; a plain `KEY` for the default organisation."""
    grants: dict[str, ApiKeyGrant | str] = {}
    for entry in keys:
        key, _, organisation = entry.partition("=")
        grants[key.strip()] = ApiKeyGrant(organisation.strip() or DEFAULT_ORGANISATION)
    return grants


def _fills(entries: Sequence[str]) -> list[tuple[str, int]]:
    """`ORG=ROWS` or a plain `ROWS` (the default organisation)."""
    fills = []
    for entry in entries:
        organisation, _, rows = entry.rpartition("=")
        try:
            count = int(rows)
        except ValueError:
            raise ValueError(f"--fill wants ROWS or ORG=ROWS, got {entry!r}") from None
        if count < 0:
            raise ValueError(f"--fill wants a number of rows >= 0, got {entry!r}")
        fills.append((organisation.strip() or DEFAULT_ORGANISATION, count))
    return fills


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the sandbox until interrupted.

    Args:
        argv: Command-line arguments without the program name; `sys.argv[1:]` if `None`.

    Returns:
        The exit status: 0 after Ctrl-C or SIGTERM, 1 if it cannot listen or open the
        database, 2 for unusable options.
    """
    parser = _parser()
    options = parser.parse_args(argv)
    keys, generated = _keys(options.api_keys)
    try:
        faults = FaultConfig(
            rate=options.fault_rate,
            kinds=[kind.strip() for kind in options.faults.split(",") if kind.strip()],
            seed=options.seed,
            late_commit_seconds=options.late_commit_seconds,
        )
        fills = _fills(options.fill)
        config = SandboxConfig(
            api_keys=_grants(keys),
            db_path=options.db,
            faults=faults,
            http_parser=options.http,
            physical_sample_conflict=options.physical_sample_conflict,
        )
    except ValueError as exc:
        parser.error(str(exc))
    # SIGINT too, explicitly: a process started in the background by a shell inherits
    # SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    try:
        with run_sandbox(config, host=options.host, port=options.port) as sandbox:
            for organisation, rows in fills:
                sandbox.app.store.fill(organisation, rows)
                print(f"Filled organisation {organisation!r} with {rows} rows.", flush=True)
            if generated:
                print(f"API key (generated, organisation {DEFAULT_ORGANISATION!r}): {keys[0]}")
            print(
                f"Atomscale sandbox listening on {sandbox.url} - API docs at {sandbox.url}/docs"
                " - Ctrl-C to stop",
                flush=True,
            )
            threading.Event().wait()
    except KeyboardInterrupt:
        print("Stopped.")
    except sqlite3.Error as exc:
        print(f"Cannot use the database {options.db}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
