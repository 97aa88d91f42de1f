"""The artifact of a stack file that cannot be used: its problems, one per line.

Such a file has no stack to draw; the markdown artifact says what to fix.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from prefect_atomscale._artifacts._stack import plural
from prefect_atomscale._exceptions import InvalidStackFileError

__all__ = ["publish_invalid_file"]


def publish_invalid_file(path: str, error: InvalidStackFileError) -> None:
    """A markdown artifact listing a file's problems: it has no stack to draw.

    Key `stack-file-<file name>-invalid`; one problem per line, as the error says them.
    """
    name = Path(path).name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "unnamed"
    # First lines: a formula's problem goes on with the formula and a caret under it.
    problems = [problem.describe().splitlines()[0] for problem in error.problems]
    problems = problems or [str(error).splitlines()[0]]
    said = plural(len(problems), "problem")
    create_markdown_artifact(
        markdown="\n\n".join(
            [
                f"### {_md(name)} cannot be used",
                f"**{said}**; nothing was sent. Fix the file and run again.",
                "\n".join(f"- {_md(problem)}" for problem in problems),
            ]
        ),
        key=f"stack-file-{slug}-invalid",
        description=f"Stack file {path} cannot be used: {said}; nothing was sent.",
    )


def _md(text: str) -> str:
    """Escape what markdown would read as formatting or HTML."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)
