"""The promise, judged from the sandbox's audit alone (tasks' returns only for I3 and adoption).

The audit is replayed one store transaction at a time (what a reader could ever see):

- I1: at most one row per (target material, position) written by Ann's keys, at any
  moment; and one target material per identity (name, substrate, metadata without the
  `prefect_atomscale` mark) per person. A colleague's row beside hers is fine.
- I2: no row Bob created is ever updated or deleted by Ann's keys.
- I3: whatever an op reported as success (a layer, a stack, a material) was stored,
  with that record id, position and values, in a version that was live at some instant
  between the op's start and end.
- I4: Ann's keys never add a layer to Bob's material, and no op of hers returns one of
  his materials as success; a second material of one identity, made by her second or
  rotated key, breaks I4 (by the same key, I1).

Excused, and only these, each with its reason printed:

- a row (or material) committed by the service more than `SETTLE_SECONDS` after its
  client gave up (the audit's `gave_up_at`), doubled at its own position;
- a material created without layers, invisible in the listing (no layers) while the
  second one's creator looked, whose create reply never reached that creator: lost to an
  injected fault, to a SIGKILL, to an op that ended in error, or delivered to a process
  with another PREFECT_HOME, whose cache the second creator cannot read;
- two writers with no shared lock domain: different machines, no common lock URL.

Which op wrote a row is read from the ops' results where one returned it, else from the
ops of Ann's writers that were running (and aimed at that material) when it was written.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from adversary._model import ANN_KEYS, PERSON, Op
from adversary._runner import RunRecord, WriterInfo

SETTLE_SECONDS = 3.0
OWNER_KEY = "prefect_atomscale"
REPLY_LOST = frozenset(
    {"drop_after_commit", "500_after_commit", "slow_after_commit", "commit_late"}
)
# A write may commit a moment after its op's end was seen (a killed writer's POST).
_SLACK = 0.5
_KILLED_SLACK = 2.0


@dataclass
class Verdict:
    """What the check found.

    Attributes:
        violations: Each broken promise, one line each, starting with I1..I4.
        excused: Each documented non-guarantee met, with why it is excused.
        harness: What went wrong in the harness itself (also a failure).
    """

    violations: list[str] = field(default_factory=list)
    excused: list[str] = field(default_factory=list)
    harness: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No violation and no harness error."""
        return not self.violations and not self.harness


@dataclass
class _OpRun:
    op: Op
    writer: str
    start: float
    end: float
    status: str  # ok, error, skipped, unknown (killed or never ended)
    sample_id: int | None
    result: Any = None
    state: str = ""
    error: str = ""


def _strip(metadata: Any) -> dict[str, Any]:
    stored = dict(metadata or {})
    stored.pop(OWNER_KEY, None)
    return stored


def _identity(row: dict[str, Any]) -> tuple[str, str, str]:
    import json

    return (
        str(row["sample_name"]),
        str(row["substrate"]),
        json.dumps(_strip(row["sample_metadata"]), sort_keys=True),
    )


def _results(result: Any) -> list[dict[str, Any]]:
    if isinstance(result, list):
        return [item for item in result if isinstance(item, dict)]
    return [result] if isinstance(result, dict) else []


class _Check:
    def __init__(self, record: RunRecord, history: list[dict[str, Any]], ann: str, bob: str):
        self.record = record
        self.ann, self.bob = ann, bob
        self.verdict = Verdict(harness=list(record.harness_errors))
        prefix = f"{record.prefix}-"
        # I1-I4 are about target materials and layers; growth runs (physical samples)
        # rest on the service's unique name and are judged in tests/test_growth_runs.py.
        entries = [
            e for e in history if e["seq"] > record.seq0 and e["kind"] in ("layer", "material")
        ]
        self.materials = {
            e["record_id"]: e
            for e in entries
            if e["kind"] == "material"
            and e["action"] == "insert"
            and str(e["row"]["sample_name"]).startswith(prefix)
        }
        self.entries = [e for e in entries if e["sample_id"] in self.materials]
        self.creator: dict[tuple[str, int], str] = {}
        self.versions: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for entry in self.entries:
            key = (entry["kind"], entry["record_id"])
            if entry["action"] == "insert":
                self.creator[key] = entry["user_id"]
            self.versions[key].append(entry)
        self.refs = {sample_id: ref for ref, sample_id in record.refs.items()}
        self.ops = self._op_runs()
        self.reported: set[tuple[Any, ...]] = set()

    # --- what happened, in words ---------------------------------------------------------

    def at(self, moment: float) -> str:
        return f"+{moment - self.record.t0:.2f} s"

    def material(self, sample_id: int) -> str:
        owner = "Bob's" if self.creator.get(("material", sample_id)) == self.bob else "Ann's"
        name = self.refs.get(sample_id) or str(self.materials[sample_id]["row"]["sample_name"])
        name = name.removeprefix(f"{self.record.prefix}-")
        return f"{owner} {name} (sample {sample_id})"

    def layer(self, entry: dict[str, Any]) -> str:
        row = entry["row"]
        orientation = f" {row['orientation']}" if row.get("orientation") else ""
        return f"row {entry['record_id']} ({row.get('composition_string')}{orientation})"

    def who(self, runs: list[_OpRun]) -> str:
        if not runs:
            return "no op of Ann's was running"
        return ", ".join(f"{run.op.id} on {run.writer}" for run in runs)

    # --- the ops, from their start and end events ---------------------------------------

    def _op_runs(self) -> list[_OpRun]:
        record = self.record
        kills = {writer: at for writer, kind, at in record.signals if kind == "kill"}
        starts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        ends: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in record.outcomes:
            (starts if line["event"] == "start" else ends)[line["op"]].append(line)
        runs = []
        for op_id, started in starts.items():
            op = record.schedule.op(op_id)
            for index, start in enumerate(started):
                end = ends[op_id][index] if index < len(ends[op_id]) else None
                writer = str(start["writer"])
                if end is None:
                    until = kills.get(writer, float("inf")) + _KILLED_SLACK
                    status = "unknown"
                else:
                    until, status = float(end["at"]), str(end.get("status"))
                runs.append(
                    _OpRun(
                        op=op,
                        writer=writer,
                        start=float(start["at"]),
                        end=until,
                        status=status,
                        sample_id=start.get("sample_id"),
                        result=end.get("result") if end else None,
                        state=str(end.get("state", "")) if end else "",
                        error=str(end.get("error", "")) if end else "",
                    )
                )
        return runs

    def writer_info(self, name: str) -> WriterInfo | None:
        return self.record.writers.get(name)

    def shared_domain(self, first: str, second: str) -> bool:
        one, two = self.writer_info(first), self.writer_info(second)
        if one is None or two is None:
            return True
        return one.machine == two.machine or (
            one.lock_url is not None and one.lock_url == two.lock_url
        )

    def writers_of(self, entry: dict[str, Any]) -> list[_OpRun]:
        """The ops of Ann's that may have made this insert.

        Those running, and aimed at its material, when it was written (for a write
        committed after its client gave up: when the client gave up); of those, the
        ones that returned it, if any (an op that adopted it later is not its writer).
        """
        kind, record_id = entry["kind"], entry["record_id"]
        moment = entry["gave_up_at"] or entry["at"]
        running = [
            run
            for run in self.ops
            if run.writer != "bob"
            and run.start <= moment <= run.end + _SLACK
            and self._aims_at(run, entry)
        ]
        returned = [
            run
            for run in running
            if run.status == "ok"
            and any(
                (item.get("layer") and kind == "layer" and item.get("id") == record_id)
                or (
                    not item.get("layer")
                    and kind == "material"
                    and run.op.kind == "create_material"
                    and item.get("sample_id") == record_id
                )
                for item in _results(run.result)
            )
        ]
        return returned or running

    def _aims_at(self, run: _OpRun, entry: dict[str, Any]) -> bool:
        material = self.materials[entry["sample_id"]]
        if run.op.kind == "create_material" or entry["kind"] == "material":
            if run.op.kind != "create_material":
                return False
            return bool(self.record.names.get(run.op.material) == material["row"]["sample_name"])
        return (
            run.op.kind in ("create_layer", "create_layers") and run.sample_id == entry["sample_id"]
        )

    def cross_domain(self, first: list[_OpRun], second: list[_OpRun]) -> str | None:
        for one in first:
            for two in second:
                if one.writer != two.writer and not self.shared_domain(one.writer, two.writer):
                    a, b = self.writer_info(one.writer), self.writer_info(two.writer)
                    assert a is not None and b is not None
                    return (
                        f"written by {one.writer} (machine {a.machine}) and {two.writer} "
                        f"(machine {b.machine}), which share no lock domain"
                    )
        return None

    def late(self, entry: dict[str, Any]) -> str | None:
        gave_up = entry["gave_up_at"]
        if gave_up is not None and entry["at"] - gave_up > SETTLE_SECONDS:
            return (
                f"{entry['kind']} {entry['record_id']} was committed {entry['at'] - gave_up:.1f} s "
                f"after its client gave up, beyond the {SETTLE_SECONDS:g} s settle window"
            )
        return None

    # --- the replay -----------------------------------------------------------------------

    def run(self) -> Verdict:
        live_layers: dict[int, dict[str, Any]] = {}
        live_materials: dict[int, dict[str, Any]] = {}
        by_txn: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for entry in self.entries:
            by_txn[entry["txn"]].append(entry)
        self.layer_counts: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for _txn, entries in sorted(by_txn.items(), key=lambda item: item[1][0]["seq"]):
            touched_positions: set[tuple[int, int]] = set()
            touched_materials: set[int] = set()
            for entry in entries:
                self._i2_and_i4(entry)
                if entry["kind"] == "layer":
                    if entry["action"] == "delete":
                        live_layers.pop(entry["record_id"], None)
                    else:
                        live_layers[entry["record_id"]] = entry
                        touched_positions.add((entry["sample_id"], entry["layer_id"]))
                else:
                    live_materials[entry["record_id"]] = entry
                    touched_materials.add(entry["record_id"])
            moment = entries[-1]["at"]
            for sample_id in {e["sample_id"] for e in entries if e["kind"] == "layer"}:
                count = sum(1 for e in live_layers.values() if e["sample_id"] == sample_id)
                self.layer_counts[sample_id].append((moment, count))
            for position in sorted(touched_positions):
                self._i1_layers(position, live_layers)
            for sample_id in sorted(touched_materials):
                self._i1_materials(sample_id, live_materials)
        self._adoptions()
        self._i3()
        return self.verdict

    def _i2_and_i4(self, entry: dict[str, Any]) -> None:
        if entry["user_id"] != self.ann:
            return
        key = (entry["kind"], entry["record_id"])
        creator = self.creator.get(key)
        if entry["action"] in ("update", "delete") and creator != self.ann:
            what = (
                f"{self.layer(entry)} at L{entry['layer_id']} of "
                f"{self.material(entry['sample_id'])}"
                if entry["kind"] == "layer"
                else self.material(entry["record_id"])
            )
            self.verdict.violations.append(
                f"I2: Ann's key {entry['action']}d Bob's {entry['kind']} {what} at "
                f"{self.at(entry['at'])}"
            )
        if (
            entry["kind"] == "layer"
            and entry["action"] == "insert"
            and self.creator.get(("material", entry["sample_id"])) != self.ann
        ):
            runs = self.writers_of(entry)
            self.verdict.violations.append(
                f"I4: Ann's key added {self.layer(entry)} at L{entry['layer_id']} to "
                f"{self.material(entry['sample_id'])} at {self.at(entry['at'])} "
                f"({self.who(runs)})"
            )

    def _i1_layers(self, position: tuple[int, int], live: dict[int, dict[str, Any]]) -> None:
        sample_id, layer_id = position
        rows = sorted(
            (e for e in live.values() if (e["sample_id"], e["layer_id"]) == position),
            key=lambda e: e["record_id"],
        )
        ann_rows = [e for e in rows if self.creator.get(("layer", e["record_id"])) == self.ann]
        if len(ann_rows) < 2:
            return
        key = ("layers", position, tuple(e["record_id"] for e in ann_rows))
        if key in self.reported:
            return
        self.reported.add(key)
        where = f"L{layer_id} of {self.material(sample_id)}"
        rows_text = "; ".join(
            f"{self.layer(e)} at {self.at(e['at'])} by {self.who(self.writers_of(e))}"
            for e in ann_rows
        )
        # Each older row must be excused against the one just written, or it is a duplicate.
        newest, older = ann_rows[-1], ann_rows[:-1]
        reasons: list[str] = []
        for other in older:
            reason = (
                self.late(newest)
                or self.late(other)
                or self.cross_domain(self.writers_of(other), self.writers_of(newest))
            )
            if reason is None:
                reasons = []
                break
            reasons.append(reason)
        message = f"{where} holds {len(ann_rows)} rows written by Ann: {rows_text}"
        if reasons:
            excuse = "; ".join(dict.fromkeys(reasons))
            self.verdict.excused.append(f"I1 {message} -- excused: {excuse}")
        else:
            self.verdict.violations.append(f"I1: {message}")

    def _i1_materials(self, sample_id: int, live: dict[int, dict[str, Any]]) -> None:
        if self.creator.get(("material", sample_id)) != self.ann:
            return
        identity = _identity(live[sample_id]["row"])
        same = sorted(
            (
                e
                for e in live.values()
                if self.creator.get(("material", e["record_id"])) == self.ann
                and _identity(e["row"]) == identity
            ),
            key=lambda e: e["record_id"],
        )
        if len(same) < 2:
            return
        key = ("materials", tuple(e["record_id"] for e in same))
        if key in self.reported:
            return
        self.reported.add(key)
        inserts = [self.materials[e["record_id"]] for e in same]
        writers = [self.writers_of(e) for e in inserts]
        keys = {run.op.key for runs in writers for run in runs}
        rule = "I4" if len(keys & set(ANN_KEYS)) > 1 else "I1"
        text = "; ".join(
            f"{self.material(e['record_id'])} created at {self.at(e['at'])} by {self.who(runs)}"
            + (f" [{', '.join(sorted({r.op.key for r in runs}))}]" if runs else "")
            for e, runs in zip(inserts, writers, strict=True)
        )
        name = identity[0].removeprefix(f"{self.record.prefix}-")
        message = f"Ann has {len(same)} target materials {name!r} of one identity: {text}"
        reason = self._material_excuse(sample_id, inserts, writers)
        if reason:
            self.verdict.excused.append(f"{rule} {message} -- excused: {reason}")
        else:
            self.verdict.violations.append(f"{rule}: {message}")

    def _material_excuse(
        self, touched: int, inserts: list[dict[str, Any]], writers: list[list[_OpRun]]
    ) -> str | None:
        """Why the material just made (or changed) may double each of the others, if it may."""
        runs_of = {e["record_id"]: runs for e, runs in zip(inserts, writers, strict=True)}
        newest = self.materials[touched]
        reasons = []
        for other in inserts:
            if other["record_id"] == touched:
                continue
            first, second = sorted((other, newest), key=lambda e: e["record_id"])
            first_runs, second_runs = runs_of[first["record_id"]], runs_of[second["record_id"]]
            reason = (
                self.late(first)
                or self.late(second)
                or self.cross_domain(first_runs, second_runs)
                or self._lost_empty(first, first_runs, second, second_runs)
            )
            if reason is None:
                return None
            reasons.append(reason)
        return "; ".join(dict.fromkeys(reasons)) or None

    def _lost_empty(
        self,
        first: dict[str, Any],
        first_runs: list[_OpRun],
        second: dict[str, Any],
        second_runs: list[_OpRun],
    ) -> str | None:
        """The documented case: an empty material whose reply never reached the second creator."""
        with_layers = any(e["txn"] == first["txn"] and e["kind"] == "layer" for e in self.entries)
        if with_layers:
            return None
        since = min((run.start for run in second_runs), default=second["at"])
        points = self.layer_counts[first["record_id"]]
        at_since = 0
        for moment, count in points:
            if moment <= since:
                at_since = count
        emptied = any(count == 0 for moment, count in points if since < moment <= second["at"])
        if at_since > 0 and not emptied:
            return None  # listed (it had layers) all the while the second creator looked
        empty = f"{self.material(first['record_id'])} was created without layers and not listed"
        if first["fault"] in REPLY_LOST:
            return f"{empty}, and its create reply was lost ({first['fault']})"
        for run in first_runs:
            if run.status == "unknown":
                return f"{empty}, and its creator {run.writer} was killed before the reply"
            if run.status == "error":
                return f"{empty}, and its create ({run.op.id}) ended in error: {run.error}"
        for one in first_runs:
            for two in second_runs:
                a, b = self.writer_info(one.writer), self.writer_info(two.writer)
                if a is not None and b is not None and a.home != b.home:
                    return (
                        f"{empty}, and its reply went to {one.writer}, whose PREFECT_HOME "
                        f"(cache) {two.writer} does not share"
                    )
        return None

    def _adoptions(self) -> None:
        for run in self.ops:
            if run.status != "ok" or run.op.kind != "create_material":
                continue
            for item in _results(run.result):
                sample_id = item.get("sample_id")
                creator = self.creator.get(("material", int(sample_id or 0)))
                if creator is not None and creator != self.ann:
                    self.verdict.violations.append(
                        f"I4: {run.op.id} on {run.writer} [{run.op.key}] returned "
                        f"{self.material(int(sample_id or 0))} as its own "
                        f"({self.at(run.start)}..{self.at(run.end)})"
                    )

    # --- I3 ---------------------------------------------------------------------------------

    def _i3(self) -> None:
        for run in self.ops:
            if run.status != "ok" or run.writer == "bob":
                continue
            for item in _results(run.result):
                problem = self._held(run, item)
                if problem:
                    self.verdict.violations.append(problem)

    def _held(self, run: _OpRun, item: dict[str, Any]) -> str | None:
        if item.get("layer"):
            key = ("layer", int(item["id"]))
            wanted = {
                "layer_id": item["layer_id"],
                "sample_id": item["sample_id"],
                "composition_string": item["composition_string"] or None,
                "orientation": item["orientation"] or None,
            }
            what = (
                f"layer {item['id']} at L{item['layer_id']} as {item['composition_string']} "
                f"{item['orientation'] or ''}".rstrip()
            )
        else:
            key = ("material", int(item["sample_id"]))
            wanted = {
                "sample_name": item["sample_name"],
                "substrate": item["substrate"],
                "sample_metadata": _strip(item["sample_metadata"]),
            }
            what = (
                f"material {item['sample_id']} as {item['sample_name']!r} "
                f"meta={wanted['sample_metadata']}"
            )
        versions = self.versions.get(key, [])
        if not versions:
            if key[0] == "material" and key[1] not in self.materials:
                return (
                    f"I3: {run.op.id} on {run.writer} returned {what}, which no write of this "
                    "schedule stored"
                )
            return f"I3: {run.op.id} on {run.writer} returned {what}, never stored"
        seen = []
        for entry, following in zip(versions, [*versions[1:], None], strict=True):
            if entry["action"] == "delete":
                continue
            row = entry["row"]
            if key[0] == "layer":
                held = {name: row.get(name) or None for name in wanted}
                held["layer_id"], held["sample_id"] = row["layer_id"], row["sample_id"]
            else:
                held = {
                    "sample_name": row["sample_name"],
                    "substrate": row["substrate"],
                    "sample_metadata": _strip(row["sample_metadata"]),
                }
            until = following["at"] if following is not None else float("inf")
            gone = "" if following is None else f" until {self.at(until)} ({following['action']})"
            seen.append(f"{held} from {self.at(entry['at'])}{gone}")
            if held == wanted and entry["at"] <= run.end and until > run.start:
                return None
        return (
            f"I3: {run.op.id} on {run.writer} reported success ({run.state}) with {what} "
            f"between {self.at(run.start)} and {self.at(run.end)}, but the service held "
            + "; ".join(seen)
        )


def check(record: RunRecord, history: list[dict[str, Any]], ann: str, bob: str) -> Verdict:
    """Judge a run from the sandbox's audit.

    Args:
        record: What the runner recorded.
        history: The sandbox's audit (`SandboxHandle.history(after=record.seq0)`).
        ann: Ann's `user_id` (every key of hers writes as it).
        bob: Bob's `user_id`.

    Returns:
        The violations, the excused non-guarantees and any harness errors.
    """
    assert PERSON["bob-key"] == "bob"
    return _Check(record, history, ann, bob).run()
