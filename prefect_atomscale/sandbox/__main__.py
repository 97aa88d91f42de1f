"""Command line: serve the sandbox in the foreground until Ctrl-C.

Run `python -m prefect_atomscale.sandbox --help` for the options. Keys come from
`--api-key`, else from the environment variable `ATOMSCALE_SANDBOX_API_KEYS`
(comma-separated), else one is generated and printed once at start-up. All keys act for
one organisation, "sandbox".
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

from prefect_atomscale.sandbox.config import DEFAULT_ORGANISATION, ApiKeyGrant, SandboxConfig
from prefect_atomscale.sandbox.connections import HTTP_PARSERS
from prefect_atomscale.sandbox.faults import FaultConfig, FaultKind
from prefect_atomscale.sandbox.server import run_sandbox

__all__ = ["main"]

KEYS_VARIABLE = "ATOMSCALE_SANDBOX_API_KEYS"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m prefect_atomscale.sandbox",
        description="Serve a local stand-in for the Atomscale target-materials API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"an API key to accept (repeatable); default: ${KEYS_VARIABLE}, else a new one",
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
        default=",".join(FaultKind),
        metavar="KIND,KIND",
        help=f"fault kinds to draw from (default: all: {','.join(FaultKind)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
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


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the sandbox until interrupted.

    Args:
        argv: Command-line arguments without the program name; `sys.argv[1:]` if `None`.

    Returns:
        The exit status: 0 after Ctrl-C or SIGTERM, 1 if it cannot listen or open the
        database, 2 for unusable options.

    Example:
        ```python
        from prefect_atomscale.sandbox.__main__ import main

        main(["--port", "0", "--api-key", "demo-key", "--fault-rate", "0.1"])
        ```
    """
    parser = _parser()
    options = parser.parse_args(argv)
    keys, generated = _keys(options.api_keys)
    try:
        faults = FaultConfig(
            rate=options.fault_rate,
            kinds=[kind.strip() for kind in options.faults.split(",") if kind.strip()],
            seed=options.seed,
        )
        config = SandboxConfig(
            api_keys={key: ApiKeyGrant(DEFAULT_ORGANISATION) for key in keys},
            db_path=options.db,
            faults=faults,
            http_parser=options.http,
        )
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with run_sandbox(config, host=options.host, port=options.port) as sandbox:
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
