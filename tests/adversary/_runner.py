"""Run a schedule against a sandbox: real HTTP, real Prefect flows, real processes and signals.

Phase by phase: Redis restarts if asked, Bob writes over HTTP, the faults arm, the
writer processes start and wait at a barrier, then everyone goes at once (the test
process's own flow in this thread) while watcher threads send the signals. When all
have ended the faults are cleared and the sandbox is drained of writes still in flight
(late commits), so the audit is complete before the next phase and before the check.

Names are unique per schedule (`adv<seed>-<nonce>-<ref>`), so schedules can share a
sandbox one after another. What the checker needs comes back in a `RunRecord`: the
audit position where the schedule started, every op's start and end, the writers'
lock domains, and the signals sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from helpers import RedisServer, clean_environment

from adversary._model import BOB_KEY, FaultPlan, Op, Phase, Run, Schedule, Signal, Writer
from adversary._session import LEASE_ENV, LOCK_DIR_ENV, LOCK_URL_ENV, Environment
from adversary._writer import Connection, FlowSpec, run_flow
from atomscale_sandbox import FaultConfig

ROOT = Path(__file__).resolve().parents[2]
LISTING = ("GET", "/target-materials/")
_NO_FCNTL = (
    "import sys; sys.modules['fcntl'] = None; import runpy; "
    "runpy.run_module('adversary._writer', run_name='__main__', alter_sys=True)"
)
READY_SECONDS = 120.0
RUN_SECONDS = 240.0
DRAIN_SECONDS = 30.0


@dataclass
class WriterInfo:
    """Where a writer ran, as the checker needs it.

    Attributes:
        name: The writer.
        machine: Its machine (0: this one).
        home: Its PREFECT_HOME.
        lock_url: The lock URL it had, if any.
    """

    name: str
    machine: int
    home: str
    lock_url: str | None


@dataclass
class RunRecord:
    """What happened when a schedule ran.

    Attributes:
        schedule: The schedule.
        prefix: Its names' prefix.
        names: Material reference -> name.
        t0: `time.monotonic()` when it started.
        seq0: The audit's last `seq` before it started.
        outcomes: Every op's `start` and `end` events (see `_writer`), Bob's too.
        writers: Writer name -> where it ran.
        signals: `(writer, kind, at)` for each signal sent (`kill`, `stop`, `cont`).
        refs: Material reference -> sample_id, as bound by the first create.
        notes: What the harness saw happen (exit codes, signals not sent).
        harness_errors: What went wrong in the harness itself (a writer that crashed).
    """

    schedule: Schedule
    prefix: str
    names: dict[str, str]
    t0: float
    seq0: int
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    writers: dict[str, WriterInfo] = field(default_factory=dict)
    signals: list[tuple[str, str, float]] = field(default_factory=list)
    refs: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    harness_errors: list[str] = field(default_factory=list)


@dataclass
class _Started:
    run: Run
    process: subprocess.Popen[bytes]
    outcomes: Path
    ready: Path
    log: Path


def in_flight(env: Environment) -> int:
    """Requests the sandbox has received and not yet answered (or dropped)."""
    stats = env.sandbox.stats
    return stats.requests - sum(stats.by_status.values()) - stats.unanswered


def _arm(faults: FaultConfig, plan: FaultPlan) -> None:
    faults.set(
        rate=plan.rate,
        kinds=plan.kinds or [k.value for k in FaultConfig().kinds],
        seed=plan.seed,
        methods=plan.methods,
        paths=plan.paths,
        retry_after_seconds=1,
        slow_seconds=plan.slow_seconds,
        late_commit_seconds=plan.late_commit_seconds,
    )
    faults.queue(plan.queue)


def calm(faults: FaultConfig) -> None:
    """Stop every fault and put every setting back to a new `FaultConfig`'s."""
    default = FaultConfig()
    faults.clear()
    faults.set(
        kinds=default.kinds,
        seed=default.seed,
        paths=default.paths,
        methods=default.methods,
        retry_after_seconds=default.retry_after_seconds,
        slow_seconds=default.slow_seconds,
        late_commit_seconds=default.late_commit_seconds,
    )


@contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Runner:
    """Runs schedules in one environment, one after another.

    Args:
        env: The environment.
        redis: The Redis server for schedules with Redis locks; the environment's
            own (started on first use) if None.
    """

    def __init__(self, env: Environment, redis: RedisServer | None = None) -> None:
        self.env = env
        self._redis = redis

    @property
    def redis(self) -> RedisServer:
        """The Redis server schedules lock on."""
        return self._redis or self.env.redis()

    def run(self, schedule: Schedule) -> RunRecord:
        """Run every phase of `schedule`; never raises for what the package does."""
        prefix = f"adv{schedule.seed}-{uuid.uuid4().hex[:6]}"
        names = {ref: f"{prefix}-{ref}" for ref in schedule.materials}
        record = RunRecord(
            schedule=schedule,
            prefix=prefix,
            names=names,
            t0=time.monotonic(),
            seq0=self.env.sandbox.app.store.last_history_seq(),
        )
        folder = self.env.root / prefix
        folder.mkdir(parents=True)
        for writer in schedule.writers:
            record.writers[writer.name] = WriterInfo(
                writer.name,
                writer.machine,
                str(self._home(folder, writer)),
                self._lock_url(schedule, writer),
            )
        if any(info.lock_url for info in record.writers.values()):
            # What an earlier schedule left (counters, a killed writer's lease) must not
            # change this one: a replay of its seed starts from an empty Redis too.
            self.redis.client().flushall()
        main = schedule.writer("main") if any(w.name == "main" for w in schedule.writers) else None
        main_url = self._lock_url(schedule, main) if main else None
        values: dict[str, str | None] = {
            LOCK_URL_ENV: main_url,
            LEASE_ENV: format(schedule.lease, "g") if main_url else None,
        }
        try:
            with _environ(values):
                for number, phase in enumerate(schedule.phases, start=1):
                    self._phase(schedule, record, folder, number, phase)
        finally:
            calm(self.env.sandbox.faults)
        return record

    # --- where writers run ---------------------------------------------------------------

    def _lock_url(self, schedule: Schedule, writer: Writer) -> str | None:
        if writer.lock == "none" or not (schedule.redis or writer.lock == "other-db"):
            return None
        url = self.redis.url
        return url[: -len("/0")] + "/1" if writer.lock == "other-db" else url

    def _home(self, folder: Path, writer: Writer) -> Path:
        if not writer.process or (writer.machine == 0 and not writer.own_home):
            return self.env.home
        if writer.own_home:
            return folder / f"home-{writer.name}"
        return folder / f"home-machine-{writer.machine}"

    def _lock_dir(self, folder: Path, writer: Writer) -> Path:
        if writer.machine == 0:
            return self.env.lock_dir
        return folder / f"locks-machine-{writer.machine}"

    def _spec(self, schedule: Schedule, record: RunRecord, run: Run) -> FlowSpec:
        ops = [schedule.op(op_id) for wave in run.waves for op_id in wave]
        roles = {op.key for op in ops}
        connection = Connection(
            port=int(self.env.sandbox.url.rsplit(":", 1)[1]),
            keys={role: self.env.keys[role] for role in roles},
            user_ids={role: self.env.user_id(role) for role in roles},
            timeout=schedule.timeout,
            user_id=schedule.user_id,
        )
        return FlowSpec(
            writer=run.writer,
            connection=connection,
            ops=ops,
            waves=run.waves,
            names=record.names,
            substrates=schedule.materials,
            refs=dict(record.refs),
        )

    # --- a phase -------------------------------------------------------------------------

    def _phase(
        self, schedule: Schedule, record: RunRecord, folder: Path, number: int, phase: Phase
    ) -> None:
        env = self.env
        if phase.redis_restart:
            self.redis.stop()
            self.redis.start()
            record.notes.append(f"phase {number}: Redis restarted")
        for op_id in phase.colleague:
            self._colleague(record, schedule.op(op_id))
        if phase.faults is not None:
            _arm(env.sandbox.faults, phase.faults)
        go = folder / f"go-{number}"
        started: list[_Started] = []
        try:
            for run in phase.runs:
                writer = schedule.writer(run.writer)
                if writer.process:
                    started.append(self._start(schedule, record, folder, number, run, go))
            self._wait_ready(record, started)
            listings = env.sandbox.stats.by_route.get(LISTING, 0)
            go.write_text("go\n")
            fired = threading.Event()
            watchers = [
                threading.Thread(
                    target=self._signal,
                    args=(record, signal_, started, listings),
                    daemon=True,
                )
                for signal_ in phase.signals
            ]
            for watcher in watchers:
                watcher.start()
            threading.Thread(target=_when_all_ended, args=(watchers, fired), daemon=True).start()
            for run in phase.runs:
                if not schedule.writer(run.writer).process:
                    if run.after_signal:
                        fired.wait(timeout=RUN_SECONDS)
                    self._run_here(schedule, record, run)
            self._wait_done(record, started)
            for watcher in watchers:
                watcher.join(timeout=RUN_SECONDS)
        finally:
            for each in started:
                if each.process.poll() is None:
                    each.process.kill()
                    each.process.wait()
            calm(env.sandbox.faults)
        self._drain(record, number)
        self._collect(record, started)

    def _run_here(self, schedule: Schedule, record: RunRecord, run: Run) -> None:
        spec = self._spec(schedule, record, run)
        lock = threading.Lock()

        def report(line: dict[str, Any]) -> None:
            with lock:
                record.outcomes.append(line)

        try:
            run_flow(spec, report)
        except Exception as exc:  # the flow itself failed, not an op
            record.harness_errors.append(
                self.env.redact(f"the flow run of {run.writer} failed: {type(exc).__name__}: {exc}")
            )

    def _start(
        self,
        schedule: Schedule,
        record: RunRecord,
        folder: Path,
        number: int,
        run: Run,
        go: Path,
    ) -> _Started:
        writer = schedule.writer(run.writer)
        tag = f"{number}-{run.writer}"
        outcomes, ready, log = (folder / f"{tag}.{suffix}" for suffix in ("jsonl", "ready", "log"))
        spec_path = folder / f"{tag}.json"
        spec = self._spec(schedule, record, run)
        control = {
            "spec": {
                **asdict(spec),
                "connection": asdict(spec.connection),
                "ops": [asdict(op) for op in spec.ops],
            },
            "outcomes": str(outcomes),
            "ready": str(ready),
            "go": str(go),
        }
        spec_path.write_text(json.dumps(control))
        spec_path.chmod(0o600)
        home = self._home(folder, writer)
        home.mkdir(parents=True, exist_ok=True)
        lock_dir = self._lock_dir(folder, writer)
        lock_dir.mkdir(parents=True, exist_ok=True)
        process_env = clean_environment()
        process_env.update(
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
            PREFECT_API_URL=self.env.api_url,
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_TO_API_ENABLED="false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        process_env[LOCK_DIR_ENV] = str(lock_dir)
        url = self._lock_url(schedule, writer)
        if url:
            process_env[LOCK_URL_ENV] = url
            process_env[LEASE_ENV] = format(schedule.lease, "g")
        if writer.no_fcntl:
            command = [sys.executable, "-c", _NO_FCNTL, str(spec_path)]
        else:
            command = [sys.executable, "-m", "adversary._writer", str(spec_path)]
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=process_env, stdout=output, stderr=subprocess.STDOUT
            )
        return _Started(run, process, outcomes, ready, log)

    def _wait_ready(self, record: RunRecord, started: list[_Started]) -> None:
        deadline = time.monotonic() + READY_SECONDS
        for each in started:
            while not each.ready.exists():
                if each.process.poll() is not None or time.monotonic() > deadline:
                    record.harness_errors.append(
                        f"writer {each.run.writer} never got ready (exit "
                        f"{each.process.poll()}): {self._tail(each.log)}"
                    )
                    break
                time.sleep(0.01)

    def _wait_done(self, record: RunRecord, started: list[_Started]) -> None:
        deadline = time.monotonic() + RUN_SECONDS
        for each in started:
            try:
                code = each.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                each.process.kill()
                each.process.wait()
                record.harness_errors.append(
                    f"writer {each.run.writer} ran over {RUN_SECONDS:g} s and was killed: "
                    f"{self._tail(each.log)}"
                )
                continue
            killed = any(w == each.run.writer and k == "kill" for w, k, _ in record.signals)
            if code == -signal.SIGKILL and killed:
                record.notes.append(f"writer {each.run.writer} was killed, as scheduled")
            elif code != 0:
                record.harness_errors.append(
                    f"writer {each.run.writer} exited {code}: {self._tail(each.log)}"
                )

    def _tail(self, log: Path) -> str:
        text = log.read_text(errors="replace") if log.exists() else ""
        return self.env.redact(text[-1500:])

    def _signal(
        self, record: RunRecord, signal_: Signal, started: list[_Started], listings: int
    ) -> None:
        target = next((each for each in started if each.run.writer == signal_.writer), None)
        if target is None:
            record.notes.append(f"no {signal_.kind} for {signal_.writer}: not running")
            return
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline and target.process.poll() is None:
            starts = [line for line in _read_lines(target.outcomes) if line["event"] == "start"]
            if len(starts) > signal_.op_index:
                break
            time.sleep(0.003)
        else:
            record.notes.append(f"no {signal_.kind} for {signal_.writer}: it ended first")
            return
        if signal_.trigger == "listing":
            stats = self.env.sandbox.stats
            while stats.by_route.get(LISTING, 0) <= listings or in_flight(self.env) == 0:
                if target.process.poll() is not None or time.monotonic() > deadline:
                    record.notes.append(f"no {signal_.kind} for {signal_.writer}: no listing")
                    return
                time.sleep(0.002)
                stats = self.env.sandbox.stats
        time.sleep(signal_.delay)
        if target.process.poll() is not None:
            record.notes.append(f"no {signal_.kind} for {signal_.writer}: it ended first")
            return
        if signal_.kind == "kill":
            target.process.send_signal(signal.SIGKILL)
            record.signals.append((signal_.writer, "kill", time.monotonic()))
            return
        target.process.send_signal(signal.SIGSTOP)
        record.signals.append((signal_.writer, "stop", time.monotonic()))
        threading.Thread(target=self._resume, args=(record, signal_, target), daemon=True).start()

    def _resume(self, record: RunRecord, signal_: Signal, target: _Started) -> None:
        time.sleep(signal_.hold)
        if target.process.poll() is None:
            target.process.send_signal(signal.SIGCONT)
        record.signals.append((signal_.writer, "cont", time.monotonic()))

    def _drain(self, record: RunRecord, number: int) -> None:
        """Wait for writes still in flight (late commits) to land before going on."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while in_flight(self.env) > 0:
            if time.monotonic() > deadline:
                record.harness_errors.append(
                    f"phase {number}: {in_flight(self.env)} requests still in flight "
                    f"after {DRAIN_SECONDS:g} s"
                )
                return
            time.sleep(0.05)

    def _collect(self, record: RunRecord, started: list[_Started]) -> None:
        for each in started:
            lines = _read_lines(each.outcomes)
            record.outcomes.extend(lines)
        ends = sorted(
            (line for line in record.outcomes if line.get("event") == "end"),
            key=lambda line: float(line["at"]),
        )
        for line in ends:
            op = record.schedule.op(line["op"])
            if op.kind == "create_material" and line.get("status") == "ok":
                record.refs.setdefault(op.material, int(line["result"]["sample_id"]))

    # --- Bob, over plain HTTP ------------------------------------------------------------

    def _colleague(self, record: RunRecord, op: Op) -> None:
        env = self.env
        headers = {"X-API-KEY": env.keys[BOB_KEY]}
        start = time.monotonic()
        outcome: dict[str, Any] = {"op": op.id, "writer": "bob", "event": "end"}
        record.outcomes.append({"op": op.id, "writer": "bob", "event": "start", "at": start})
        try:
            reply = self._colleague_request(record, op, headers)
        except (httpx.HTTPError, LookupError) as exc:
            outcome.update(status="error", error=env.redact(f"{type(exc).__name__}: {exc}"))
        else:
            outcome.update(status="ok", result=reply)
            if op.kind == "colleague_material":
                record.refs.setdefault(op.material, int(reply["sample_id"]))
        outcome["at"] = time.monotonic()
        record.outcomes.append(outcome)

    def _metadata_of(self, record: RunRecord, ref: str) -> dict[str, Any]:
        sample_id = record.refs[ref]
        for material in self.env.sandbox.target_materials():
            if material["sample_id"] == sample_id:
                return dict(material["sample_metadata"] or {})
        raise LookupError(f"{ref} is not stored")

    def _colleague_request(
        self, record: RunRecord, op: Op, headers: dict[str, str]
    ) -> dict[str, Any]:
        url = self.env.sandbox.url
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
            if op.kind == "colleague_material":
                named = op.same_name_as or op.material
                metadata = self._metadata_of(record, op.copy_from) if op.copy_from else op.metadata
                body: dict[str, Any] = {
                    "sample": {
                        "sample_name": record.names[named],
                        "substrate": record.schedule.materials[named],
                        "sample_metadata": metadata or {},
                    }
                }
                if op.layers is not None:
                    body["layers"] = op.layers
                reply = client.post("/target-materials/", json=body)
            elif op.kind == "colleague_layer":
                layer = {
                    "layer_id": op.layer_id,
                    "sample_id": record.refs[op.material],
                    "composition_string": op.formula,
                    "orientation": op.orientation,
                }
                reply = client.post("/target-materials/layers/", json=layer)
            else:
                assert op.copy_from is not None
                metadata = self._metadata_of(record, op.copy_from)
                reply = client.patch(
                    f"/target-materials/{record.refs[op.material]}",
                    json={"sample_metadata": metadata},
                )
            reply.raise_for_status()
            data: dict[str, Any] = reply.json()
            return data


def _when_all_ended(threads: list[threading.Thread], done: threading.Event) -> None:
    for thread in threads:
        thread.join()
    done.set()


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of an outcomes file (a killed writer may leave half a line)."""
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines
