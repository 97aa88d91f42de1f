"""Run a schedule and judge it; and the failure message: verdict, replay command, schedule.

The message names keys by role only (every text from a writer goes through
`Environment.redact`), and prints exactly one command that replays the schedule.
"""

from __future__ import annotations

from typing import Any

from adversary._checker import Verdict, check
from adversary._model import ANN_KEYS, BOB_KEY, describe
from adversary._runner import Runner, RunRecord
from adversary._session import Environment

REPLAY_RANDOM = "python -m pytest tests/adversary/test_random_schedules.py --adversary-seed {seed}"


def judge(runner: Runner, record: RunRecord) -> Verdict:
    """Check a finished run against the sandbox's audit."""
    env = runner.env
    history = env.sandbox.history(after=record.seq0)
    return check(record, history, ann=env.user_id(ANN_KEYS[0]), bob=env.user_id(BOB_KEY))


def _result(result: Any) -> str:
    if isinstance(result, list):
        return "[" + ", ".join(_result(item) for item in result) + "]"
    if not isinstance(result, dict):
        return str(result)
    if result.get("layer"):
        return (
            f"layer {result['id']} L{result['layer_id']} {result['composition_string']} "
            f"{result['orientation'] or ''}".rstrip()
        )
    if "layer" in result:
        return f"material {result['sample_id']}"
    if "id" in result and "layer_id" in result:
        return f"layer {result['id']} L{result['layer_id']}"
    return f"material {result.get('sample_id')}"


def outcomes(record: RunRecord) -> list[str]:
    """Every op's outcome, in the order they ended, one line each."""
    starts = {
        (line["op"], line["writer"]): line for line in record.outcomes if line["event"] == "start"
    }
    lines = []
    ended = set()
    for line in sorted(
        (line for line in record.outcomes if line["event"] == "end"), key=lambda x: x["at"]
    ):
        start = starts.get((line["op"], line["writer"]), line)
        span = f"+{start['at'] - record.t0:.2f}..+{line['at'] - record.t0:.2f} s"
        state = f" ({line['state']})" if line.get("state") else ""
        detail = _result(line.get("result")) if line.get("status") == "ok" else line.get("error")
        lines.append(f"  {line['op']} {line['writer']}: {line['status']}{state} {span} {detail}")
        ended.add((line["op"], line["writer"]))
    for key, start in starts.items():
        if key not in ended:
            lines.append(
                f"  {key[0]} {key[1]}: no end (killed?) started +{start['at'] - record.t0:.2f} s"
            )
    return lines


def explain(env: Environment, record: RunRecord, verdict: Verdict, replay: str) -> str:
    """The failure message of a run that broke the promise (or the harness)."""
    count = len(verdict.violations) + len(verdict.harness)
    lines = [
        f"Adversary schedule {record.schedule.label} seed {record.schedule.seed} failed "
        f"({count} problem{'s' if count != 1 else ''}); names start {record.prefix}-",
        *(f"  {line}" for line in verdict.violations),
        *(f"  harness: {line}" for line in verdict.harness),
    ]
    if verdict.excused:
        lines += ["Excused (documented non-guarantees):", *(f"  {x}" for x in verdict.excused)]
    lines += [
        "Replay with:",
        f"  {replay}",
        "Schedule:",
        *(f"  {line}" for line in describe(record.schedule).splitlines()),
        "Outcomes (times since the schedule started):",
        *outcomes(record),
    ]
    if record.signals:
        lines.append(
            "Signals: "
            + ", ".join(
                f"{kind} {writer} +{at - record.t0:.2f} s" for writer, kind, at in record.signals
            )
        )
    if record.notes:
        lines.append("Notes: " + "; ".join(record.notes))
    materials = {ref: sample_id for ref, sample_id in record.refs.items()}
    lines.append(f"Materials: {materials}")
    return env.redact("\n".join(lines))
