"""Set up a local virtual environment; run the demo, the tests, the linters or the docs in it.

    python scripts/dev.py demo         # the example flow against the bundled sandbox
    python scripts/dev.py test         # the whole suite on 4 workers (arguments go to pytest)
    python scripts/dev.py test --fast  # the unit lane only: no sandbox, server or process
    python scripts/dev.py lint         # ruff and mypy on the package
    python scripts/dev.py docs         # the documentation, mkdocs build --strict, into site/

`test --fast` deselects every test marked `integration`, `processes`, `redis`, `sdk` or
`adversary` (the markers are in pyproject.toml; tests/conftest.py sets most of them from
the fixtures a test uses) and does not collect tests/sdk and tests/adversary at all,
whose every test carries such a mark; it runs in one process (starting workers costs
more than they would save). `test` alone runs everything on pytest-xdist workers; pass
`-n 0` (or `-p no:xdist`) to run in one process. See docs/guides/testing.md.

Needs only Python 3.11+ and pip. The first run creates `.venv` beside this repository
and installs the package with its extras `test` and `sdk` (the official Atomscale SDK,
which the tests use as a second client of the sandbox) into it; later runs reinstall
only when pyproject.toml changes. Nothing is installed outside `.venv`. Uses the standard library
only, since it runs before anything else is installed.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".prefect-atomscale-installed"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


# The unit lane. Whole-lane directories are not even collected: importing them (the SDK,
# the adversary's machinery) costs seconds, and every test in them is deselected anyway.
FAST_LANE = [
    "-m",
    "not (integration or processes or redis or sdk or adversary)",
    "--ignore=tests/sdk",
    "--ignore=tests/adversary",
]

# The whole suite on pytest-xdist workers: most of its time is spent waiting on servers and
# processes, so more workers than cores pay off. Not `--dist loadgroup` or `loadfile`: they
# hand tests out by node id, and schemathesis gives its tests one id per function (under
# pytest 9.2), so all but one of them would silently not run. Given -n, --numprocesses,
# --dist or -p no:xdist, the caller's choice stands.
PARALLEL = ["-n", "4"]
NO_PARALLEL = ("-n", "--numprocesses", "--dist")


def _run(*command: str | Path) -> int:
    return subprocess.call([str(part) for part in command], cwd=ROOT)


def _ensure_venv() -> None:
    """Create `.venv` and install the package into it, unless that is already done."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before any check
        sys.exit(f"prefect-atomscale needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    print(f"Setting up {VENV.relative_to(ROOT)} (first run only; takes a minute or two) ...")
    install = ["install", "--quiet", "--disable-pip-version-check", "-e", f"{ROOT}[test,sdk]"]
    if not PYTHON.exists():
        try:
            venv.create(VENV, with_pip=True)
        except subprocess.CalledProcessError:
            # Some Linux distributions ship Python without ensurepip; fall back to a
            # bare venv filled by this interpreter's pip (pip >= 22.3 has --python).
            venv.create(VENV, with_pip=False, clear=True)
    has_pip = (
        subprocess.call(
            [PYTHON, "-m", "pip", "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        == 0
    )
    pip = [PYTHON, "-m", "pip"] if has_pip else [sys.executable, "-m", "pip", "--python", PYTHON]
    if _run(*pip, *install) != 0:
        sys.exit("Installing prefect-atomscale into .venv failed; see pip's message above.")
    STAMP.write_text(wanted)


def _undocumented_names() -> list[str]:
    """Public names (`prefect_atomscale.__all__`) that no API reference page renders."""
    tree = ast.parse((ROOT / "prefect_atomscale" / "__init__.py").read_text())
    public: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            public = list(ast.literal_eval(node.value))
    pages = "\n".join(page.read_text() for page in (ROOT / "docs" / "reference").glob("*.md"))
    rendered = set(re.findall(r"^::: prefect_atomscale\.(\w+)\s*$", pages, re.MULTILINE))
    return [name for name in public if name not in rendered]


def _docs(rest: list[str]) -> int:
    """Check that the reference covers the public surface, then build the site strictly."""
    missing = _undocumented_names()
    if missing:
        print(f"docs/reference/ renders no '::: prefect_atomscale.NAME' for: {', '.join(missing)}")
        return 1
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # Material's notice, not a problem
    return _run(PYTHON, "-m", "mkdocs", "build", "--strict", "--site-dir", "site", *rest)


def main(argv: list[str]) -> int:
    """Dispatch `demo`, `test`, `lint` or `docs`; return the exit code of what ran."""
    if not argv or argv[0] not in ("demo", "test", "lint", "docs"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    _ensure_venv()
    if command == "demo":
        return _run(PYTHON, "flows/build_stack.py", *rest)
    if command == "test":
        if "--fast" in rest:
            rest = [*FAST_LANE, *(arg for arg in rest if arg != "--fast")]
        elif not any(arg.startswith(NO_PARALLEL) or arg.endswith("no:xdist") for arg in rest):
            rest = [*PARALLEL, *rest]
        return _run(PYTHON, "-m", "pytest", *rest)
    if command == "docs":
        return _docs(rest)
    return _run(PYTHON, "-m", "ruff", "check", ".") or _run(PYTHON, "-m", "mypy")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
