"""What a schedule is: writers, phases of flow runs, operations, faults and signals.

A schedule is plain data (it goes to a writer process as JSON) with a readable form
(`describe`) that a failure message prints. Materials are named by reference (`M1`, the
colleague's `C1`); the runner turns a reference into the unique name of the schedule
(`adv<seed>-<nonce>-M1`) and, once created, into its `sample_id`.

Key roles, never key values: `ann-key-1`, `ann-key-2` (Ann's second key),
`ann-key-rotated` (the key that replaced her first) and `bob-key` (Bob, her colleague
in the same organisation, who writes over plain HTTP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ANN_KEYS = ("ann-key-1", "ann-key-2", "ann-key-rotated")
BOB_KEY = "bob-key"
ROLES = (*ANN_KEYS, BOB_KEY)
PERSON = {"ann-key-1": "ann", "ann-key-2": "ann", "ann-key-rotated": "ann", BOB_KEY: "bob"}
ORGANISATION = "lab-adversary"

OpKind = Literal[
    # Ann, through the package's tasks in a Prefect flow:
    "create_material",
    "create_layer",
    "create_layers",
    "update_material",
    # Bob, over plain HTTP with his own key:
    "colleague_material",
    "colleague_layer",
    "colleague_copy_metadata",
]


@dataclass
class Op:
    """One operation.

    Attributes:
        id: Unique in the schedule, e.g. `op4`.
        kind: What it does (see `OpKind`).
        material: The material it creates or writes, by reference.
        key: The key role it uses.
        host: `127.0.0.1` or `localhost`: how the credentials block spells the sandbox.
        metadata: `create_material`/`colleague_material`: the metadata to create with;
            `update_material`: the new metadata.
        layers: `create_material`/`colleague_material`: the stack sent with it (None:
            created empty); `create_layers`: the stack.
        layer_id: `create_layer`/`colleague_layer`: the position.
        formula: `create_layer`/`colleague_layer`: the composition.
        orientation: `create_layer`/`colleague_layer`: the orientation.
        if_exists: `create_layer`/`create_layers`: what to do about a different layer.
        refresh: Run with `refresh_cache=True`.
        same_name_as: `colleague_material`: take the name of Ann's material so named.
        copy_from: `colleague_material`/`colleague_copy_metadata`: copy the stored
            metadata of this (Ann's) material, her `prefect_atomscale` mark included.
        rerun_of: The op this one repeats, for the readable form.
    """

    id: str
    kind: OpKind
    material: str
    key: str = "ann-key-1"
    host: str = "127.0.0.1"
    metadata: dict[str, Any] | None = None
    layers: list[dict[str, Any]] | None = None
    layer_id: int = 0
    formula: str = ""
    orientation: str = "001"
    if_exists: str = "error"
    refresh: bool = False
    same_name_as: str | None = None
    copy_from: str | None = None
    rerun_of: str | None = None


@dataclass
class Writer:
    """A writer: the test process itself, or a process of its own.

    Attributes:
        name: `main` (this process) or `p1`, `p2`, ...
        process: Runs in a process of its own (started per flow run).
        machine: 0 is this machine (its lock directory); another number is another
            machine, with a lock directory and PREFECT_HOME of its own.
        own_home: A PREFECT_HOME of its own (so a cache of its own) on its machine.
        no_fcntl: Started with `fcntl` unimportable, as on Windows.
        lock: `schedule` (the schedule's lock URL, if Redis is on), `none` (no lock URL
            even when the others have one) or `other-db` (Redis, another database).
    """

    name: str
    process: bool = False
    machine: int = 0
    own_home: bool = False
    no_fcntl: bool = False
    lock: Literal["schedule", "none", "other-db"] = "schedule"


@dataclass
class Run:
    """One flow run of a writer in a phase: waves of ops, each wave submitted at once.

    Attributes:
        writer: The writer's name.
        waves: Op ids; the ops of a wave are `.submit`ted together (one alone is called).
        after_signal: Start only once this phase's signals have fired.
    """

    writer: str
    waves: list[list[str]]
    after_signal: bool = False


@dataclass
class Signal:
    """A signal to a process writer during a phase.

    Attributes:
        writer: The process writer.
        kind: `kill` (SIGKILL) or `stop` (SIGSTOP, then SIGCONT after `hold`).
        trigger: `start`: `delay` seconds after its op number `op_index` started;
            `listing`: as soon as the sandbox receives a listing after that op started.
        op_index: Which of its ops (0 for the first) arms the trigger.
        delay: Seconds after the trigger.
        hold: For `stop`: seconds until SIGCONT.
    """

    writer: str
    kind: Literal["kill", "stop"]
    trigger: Literal["start", "listing"] = "start"
    op_index: int = 0
    delay: float = 0.0
    hold: float = 0.0


@dataclass
class FaultPlan:
    """Faults armed for a phase (see `atomscale_sandbox.FaultConfig`)."""

    queue: list[str] = field(default_factory=list)
    rate: float = 0.0
    kinds: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["POST", "PATCH"])
    paths: list[str] | None = None
    slow_seconds: float = 2.0
    late_commit_seconds: float = 0.5
    seed: int = 0


@dataclass
class Phase:
    """Runs that happen together; the next phase starts when all have ended.

    Attributes:
        runs: Flow runs, concurrent (process writers start together).
        colleague: Bob's op ids, done over HTTP before the runs start and faults arm.
        faults: Armed after Bob's ops, cleared when the phase ends.
        signals: Sent to process writers during the phase.
        redis_restart: Restart the Redis server (losing everything) before the phase.
    """

    runs: list[Run] = field(default_factory=list)
    colleague: list[str] = field(default_factory=list)
    faults: FaultPlan | None = None
    signals: list[Signal] = field(default_factory=list)
    redis_restart: bool = False


@dataclass
class Schedule:
    """A whole schedule.

    Attributes:
        seed: Its seed (fixed schedules have their own numbers).
        label: `random` or the fixed schedule's name.
        redis: Locks on a Redis server for every writer (unless a writer says otherwise).
        lease: The lock lease in seconds with Redis.
        timeout: The credentials' timeout.
        user_id: Ann's blocks carry her `user_id`.
        materials: Reference -> substrate.
        ops: Every op.
        writers: Every writer.
        phases: In order.
    """

    seed: int
    label: str
    redis: bool = False
    lease: float = 60.0
    timeout: float = 5.0
    user_id: bool = True
    materials: dict[str, str] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=lambda: [Writer("main")])
    phases: list[Phase] = field(default_factory=list)

    def op(self, op_id: str) -> Op:
        """The op with this id."""
        return next(op for op in self.ops if op.id == op_id)

    def writer(self, name: str) -> Writer:
        """The writer with this name."""
        return next(writer for writer in self.writers if writer.name == name)


def op_from_dict(data: dict[str, Any]) -> Op:
    """An `Op` from `dataclasses.asdict` of one."""
    return Op(**data)


def _stack(layers: list[dict[str, Any]] | None) -> str:
    if layers is None:
        return "no layers"
    parts = [
        f"L{layer.get('layer_id', index)} {layer['composition_string']}"
        f" {layer.get('orientation', '')}".rstrip()
        for index, layer in enumerate(layers, start=1)
    ]
    return "[" + ", ".join(parts) + "]"


def describe_op(op: Op) -> str:
    """One op in words."""
    extras = []
    if op.host != "127.0.0.1":
        extras.append(f"via {op.host}")
    if op.refresh:
        extras.append("refresh_cache=True")
    if op.rerun_of:
        extras.append(f"re-run of {op.rerun_of}")
    tail = f" ({', '.join(extras)})" if extras else ""
    if op.kind == "create_material":
        what = f"create_target_material {op.material} meta={op.metadata} {_stack(op.layers)}"
    elif op.kind == "create_layer":
        what = (
            f"create_layer {op.material} L{op.layer_id} {op.formula} {op.orientation}"
            f" if_exists={op.if_exists}"
        )
    elif op.kind == "create_layers":
        what = f"create_layers {op.material} {_stack(op.layers)} if_exists={op.if_exists}"
    elif op.kind == "update_material":
        what = f"update_target_material {op.material} sample_metadata={op.metadata}"
    elif op.kind == "colleague_material":
        name = f"named as {op.same_name_as}" if op.same_name_as else "own name"
        meta = f"metadata copied from {op.copy_from}" if op.copy_from else f"meta={op.metadata}"
        what = f"creates his material {op.material} ({name}, {meta}) {_stack(op.layers)}"
    elif op.kind == "colleague_layer":
        what = f"adds layer L{op.layer_id} {op.formula} {op.orientation} into {op.material}"
    else:
        what = f"copies the metadata of {op.copy_from} onto his {op.material}"
    return f"{op.id} [{op.key}] {what}{tail}"


def describe_writer(writer: Writer) -> str:
    """One writer in words."""
    if not writer.process:
        return f"{writer.name}: this process (threads of one flow), machine 0"
    parts = [f"{writer.name}: a process of its own, machine {writer.machine}"]
    if writer.own_home:
        parts.append("own PREFECT_HOME")
    if writer.no_fcntl:
        parts.append("no fcntl")
    if writer.lock != "schedule":
        parts.append(f"lock URL: {writer.lock}")
    return ", ".join(parts)


def describe_faults(faults: FaultPlan) -> str:
    """A fault plan in words."""
    parts = []
    if faults.queue:
        parts.append(f"queue {faults.queue}")
    if faults.rate:
        parts.append(f"rate {faults.rate:g} of {sorted(faults.kinds)} (seed {faults.seed})")
    parts.append(f"on {'/'.join(sorted(faults.methods))}")
    if faults.paths:
        parts.append(f"paths {sorted(faults.paths)}")
    parts.append(f"slow {faults.slow_seconds:g} s, late commit {faults.late_commit_seconds:g} s")
    return ", ".join(parts)


def describe_signal(signal: Signal) -> str:
    """A signal in words."""
    when = (
        f"{signal.delay:g} s after its op #{signal.op_index} started"
        if signal.trigger == "start"
        else f"when a listing arrives after its op #{signal.op_index} started"
    )
    if signal.kind == "kill":
        return f"SIGKILL {signal.writer} {when}"
    return f"SIGSTOP {signal.writer} {when}, SIGCONT {signal.hold:g} s later"


def describe(schedule: Schedule) -> str:
    """The whole schedule, readable, one item a line."""
    lines = [
        f"schedule {schedule.label} seed={schedule.seed}: Redis locks "
        f"{'on (lease ' + format(schedule.lease, 'g') + ' s)' if schedule.redis else 'off'}, "
        f"timeout {schedule.timeout:g} s, user_id {'set' if schedule.user_id else 'not set'}",
        "materials: "
        + ", ".join(f"{ref} on {substrate}" for ref, substrate in schedule.materials.items()),
        "writers:",
        *(f"  {describe_writer(writer)}" for writer in schedule.writers),
    ]
    for number, phase in enumerate(schedule.phases, start=1):
        lines.append(f"phase {number}:")
        if phase.redis_restart:
            lines.append("  Redis restarts first (its keys are lost)")
        for op_id in phase.colleague:
            lines.append(f"  bob: {describe_op(schedule.op(op_id))}")
        if phase.faults is not None:
            lines.append(f"  faults: {describe_faults(phase.faults)}")
        for run in phase.runs:
            after = " (starts once the signals fired)" if run.after_signal else ""
            lines.append(f"  {run.writer}: one flow run{after}")
            for wave in run.waves:
                joined = " || ".join(describe_op(schedule.op(op_id)) for op_id in wave)
                lines.append(f"    {'submit ' if len(wave) > 1 else ''}{joined}")
        for signal in phase.signals:
            lines.append(f"  signal: {describe_signal(signal)}")
    return "\n".join(lines)
