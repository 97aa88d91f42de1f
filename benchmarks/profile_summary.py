"""Summarise a py-spy profile of a benchmark: where each layer's time goes, ours vs Prefect's.

Not a benchmark itself: it reads the "raw" (collapsed stacks) output of py-spy, keeps
the samples whose stack passes through a marker frame (e.g. one flow's call), and splits
them three ways by what the stack holds below the marker:

- `HTTP (httpx under our client)`: a `prefect_atomscale` frame with httpx/httpcore/h11
  below it, i.e. the request itself, as the raw httpx loop also pays it;
- `prefect_atomscale, not HTTP`: any other sample with a `prefect_atomscale` frame
  (validation, cache key, locks, pool, logging calls made by our code);
- `Prefect and the rest`: the task engine, states, events, result store, logging of
  the engine.

It then lists the functions with the largest inclusive share. Samples are on-CPU time
only (py-spy leaves out idle threads unless run with `--idle`), so waiting for the
server or for the GIL is not in them.

Record and summarise, e.g. the per-layer benchmark (figure 1):

    py-spy record --format raw --rate 200 -o /tmp/layers.txt -- python benchmarks/per_layer.py
    python benchmarks/profile_summary.py /tmp/layers.txt --marker "run_layers" --top 30
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_HTTP = re.compile(r"\((httpx|httpcore|h11)/")
_OURS = re.compile(r"\(prefect_atomscale/")
_LINE = re.compile(r":\d+\)$")


def summarise(path: Path, marker: str, top: int) -> list[str]:
    """Read a py-spy raw profile and describe the samples under `marker`.

    Args:
        path: The file py-spy wrote with `--format raw`.
        marker: A regular expression; a sample counts if one of its frames matches.
        top: How many functions to list by inclusive share.

    Returns:
        The report, one line per item.
    """
    pattern = re.compile(marker)
    inclusive: Counter[str] = Counter()
    split: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        start = next((i for i, frame in enumerate(frames) if pattern.search(frame)), None)
        if start is None:
            continue
        below = frames[start:]
        samples = int(count)
        total += samples
        first_ours = next((i for i, frame in enumerate(below) if _OURS.search(frame)), None)
        if first_ours is None:
            split["Prefect and the rest"] += samples
        elif any(_HTTP.search(frame) for frame in below[first_ours:]):
            split["HTTP (httpx under our client)"] += samples
        else:
            split["prefect_atomscale, not HTTP"] += samples
        for function in {_LINE.sub(")", frame) for frame in below}:
            inclusive[function] += samples
    if not total:
        return [f"no samples under {marker!r} in {path}"]
    lines = [f"{total} samples under {marker!r}"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in split.most_common()]
    lines.append(f"top {top} functions by inclusive share:")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of one profile."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy output recorded with --format raw")
    parser.add_argument("--marker", required=True, help="regex of a frame to select samples by")
    parser.add_argument("--top", type=int, default=30, help="functions to list (default 30)")
    options = parser.parse_args(argv)
    print("\n".join(summarise(options.profile, options.marker, options.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
