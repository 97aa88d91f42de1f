"""Random schedules from a seed: `generate(seed)` is the same schedule for the same seed.

Every schedule starts with a phase that creates its materials (some with their stack,
some empty, sometimes the same one twice at once with different stacks), then two to
four phases drawn from a menu of what goes wrong in real use: concurrent layer writes,
a colleague writing into Ann's material or copying its name and mark, a metadata
update followed by a create of the new identity, re-runs (plain, with
`refresh_cache=True`, with Ann's second or rotated key, from another process or
machine), writer processes killed or paused past their lease, a Redis restart, and
faults (lost replies, 5xx after commit, late commits inside and beyond the settle
window, slow listings).

What is never drawn, because no client can promise it (see `_checker` for what is
excused instead): `refresh_cache=True` on a material created empty, or such a material
created again by another key or through another spelling of the URL (the listing
cannot show it, and the cache entry is the first one's); a kill in a phase whose
faults delay commits (a dead writer cannot tell its successor to wait for its write);
a pause without Redis (a paused holder of a local lock just makes the others wait); a
colleague copying Ann's mark when her blocks carry no `user_id`.
"""

from __future__ import annotations

import random
from typing import Any

from adversary._model import FaultPlan, Op, Phase, Run, Schedule, Signal, Writer

FORMULAS = ("BaTiO3", "SrTiO3", "SrRuO3", "LaAlO3", "PbTiO3", "GaN")
ORIENTATIONS = ("001", "110", "111")
SUBSTRATES = ("SrTiO3", "MgO", "Al2O3", "LaAlO3")
LAYERS_PATH = "/target-materials/layers/"
MATERIALS_PATH = "/target-materials/"
LEASE_SECONDS = 3.0


class _Generator:
    def __init__(self, seed: int) -> None:
        # Not for secrets: a repeatable schedule.
        self.rng = random.Random(seed)
        self.schedule = Schedule(seed=seed, label="random")
        self.count = 0
        self.stacks: dict[str, dict[int, tuple[str, str]]] = {}
        self.stacked: dict[str, bool] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        self.created: dict[str, Op] = {}
        self.history: list[Op] = []
        self.revision = 0

    # --- building blocks ------------------------------------------------------------------

    def op(self, **fields: Any) -> Op:
        self.count += 1
        op = Op(id=f"op{self.count}", **fields)
        self.schedule.ops.append(op)
        if op.kind in ("create_material", "create_layer", "create_layers", "update_material"):
            self.history.append(op)
        return op

    def key(self) -> str:
        if self.schedule.user_id and self.rng.random() < 0.3:
            return self.rng.choice(["ann-key-2", "ann-key-rotated"])
        return "ann-key-1"

    def host(self) -> str:
        return "localhost" if self.rng.random() < 0.25 else "127.0.0.1"

    def layer_spec(self, ref: str, position: int, *, other: bool = False) -> dict[str, Any]:
        formula, orientation = self.stacks[ref][position]
        if other:
            formula = self.rng.choice([f for f in FORMULAS if f != formula])
        return {"layer_id": position, "composition_string": formula, "orientation": orientation}

    def if_exists(self) -> str:
        return self.rng.choices(["error", "update", "reuse"], weights=[6, 2, 2])[0]

    def create_layer(self, ref: str, key: str | None = None) -> Op:
        position = self.rng.randint(1, len(self.stacks[ref]))
        layer = self.layer_spec(ref, position, other=self.rng.random() < 0.15)
        return self.op(
            kind="create_layer",
            material=ref,
            key=key or self.key(),
            host=self.host(),
            layer_id=position,
            formula=layer["composition_string"],
            orientation=layer["orientation"],
            if_exists=self.if_exists(),
            refresh=self.rng.random() < 0.1,
        )

    def create_layers(self, ref: str) -> Op:
        size = len(self.stacks[ref])
        first = self.rng.choice([1, 1, 2])
        last = self.rng.randint(first, size)
        other = self.rng.random() < 0.1
        return self.op(
            kind="create_layers",
            material=ref,
            key=self.key(),
            host=self.host(),
            layers=[self.layer_spec(ref, p, other=other) for p in range(first, last + 1)],
            if_exists=self.if_exists(),
            refresh=self.rng.random() < 0.1,
        )

    def layer_op(self, ref: str) -> Op:
        return self.create_layer(ref) if self.rng.random() < 0.6 else self.create_layers(ref)

    def rerun(self, original: Op, **changes: Any) -> Op:
        fields = {
            name: getattr(original, name)
            for name in (
                "kind",
                "material",
                "key",
                "host",
                "metadata",
                "layers",
                "layer_id",
                "formula",
                "orientation",
                "if_exists",
            )
        }
        fields.update(changes)
        return self.op(**fields, rerun_of=original.id)

    def faults(self, *, kill: bool = False) -> FaultPlan | None:
        if self.rng.random() < 0.4:
            return None
        timeout = self.schedule.timeout
        choices = ["instant", "after_commit", "rate"]
        if not kill:
            choices += ["slow_reply", "late_inside", "late_beyond", "slow_listing", "slow_write"]
        kind = self.rng.choice(choices)
        seed = self.rng.randrange(1_000_000)
        paths = self.rng.choice([None, None, [LAYERS_PATH], [MATERIALS_PATH]])
        if kind == "instant":
            queue = self.rng.choices(["503", "429", "reset", "502_html"], k=self.rng.randint(1, 2))
            return FaultPlan(queue=queue, paths=paths, seed=seed)
        if kind == "after_commit":
            queue = [self.rng.choice(["drop_after_commit", "500_after_commit"])]
            return FaultPlan(queue=queue, paths=paths, seed=seed)
        if kind == "rate":
            kinds = self.rng.sample(
                ["503", "429", "reset", "drop_after_commit", "500_after_commit"], k=2
            )
            return FaultPlan(rate=0.2, kinds=kinds, seed=seed)
        if kind == "slow_reply":
            return FaultPlan(queue=["slow_after_commit"], paths=paths, slow_seconds=timeout + 0.7)
        if kind == "late_inside":
            late = self.rng.choice([0.5, 1.5, 2.0])
            return FaultPlan(
                queue=["commit_late"], paths=paths, slow_seconds=0.3, late_commit_seconds=late
            )
        if kind == "late_beyond":
            late = self.rng.choice([4.5, 5.0])
            return FaultPlan(
                queue=["commit_late"],
                paths=[self.rng.choice([LAYERS_PATH, MATERIALS_PATH])],
                slow_seconds=0.3,
                late_commit_seconds=late,
            )
        if kind == "slow_listing":
            return FaultPlan(
                queue=["slow_before_commit"] * self.rng.randint(1, 2),
                methods=["GET"],
                slow_seconds=self.rng.choice([0.5, 1.0]),
            )
        return FaultPlan(queue=["slow_before_commit"], paths=paths, slow_seconds=1.0)

    # --- the schedule -----------------------------------------------------------------------

    def build(self) -> Schedule:
        rng, schedule = self.rng, self.schedule
        schedule.redis = rng.random() < 0.3
        schedule.lease = LEASE_SECONDS
        schedule.user_id = rng.random() < 0.65
        schedule.timeout = rng.choice([2.0, 3.0])
        if rng.random() < 0.22:
            self.add_processes()
        for number in range(1, rng.randint(1, 2) + 1):
            ref = f"M{number}"
            schedule.materials[ref] = rng.choice(SUBSTRATES)
            self.stacks[ref] = {
                position: (rng.choice(FORMULAS), rng.choice(ORIENTATIONS))
                for position in range(1, rng.randint(2, 4) + 1)
            }
            self.stacked[ref] = rng.random() < 0.5
            self.metadata[ref] = {"run": rng.randrange(1000)}
        schedule.phases.append(self.creation_phase())
        menu = [
            self.concurrent_layers,
            self.colleague_writes_into_mine,
            self.colleague_copies,
            self.update_then_create,
            self.reruns,
            self.update_then_old_request,
        ]
        if self.processes():
            menu += [self.processes_race, self.kill_and_rerun, self.kill_and_rerun]
            if schedule.redis:
                menu += [self.pause_past_lease, self.pause_past_lease]
        for _ in range(rng.randint(2, 3)):
            rng.choice(menu)()
        if schedule.redis and rng.random() < 0.3 and len(schedule.phases) > 1:
            rng.choice(schedule.phases[1:]).redis_restart = True
        return schedule

    def processes(self) -> list[Writer]:
        return [writer for writer in self.schedule.writers if writer.process]

    def add_processes(self) -> None:
        rng = self.rng
        for number in range(1, rng.choice([1, 1, 2]) + 1):
            shape = rng.choice(["same_home", "own_home", "other_machine", "no_fcntl"])
            self.schedule.writers.append(
                Writer(
                    name=f"p{number}",
                    process=True,
                    machine=number if shape == "other_machine" else 0,
                    own_home=shape in ("own_home", "other_machine"),
                    no_fcntl=shape == "no_fcntl",
                )
            )

    def material_create(self, ref: str, *, layers: list[dict[str, Any]] | None = None) -> Op:
        stack = layers
        if stack is None and self.stacked[ref]:
            size = self.rng.randint(1, len(self.stacks[ref]))
            stack = [self.layer_spec(ref, p) for p in range(1, size + 1)]
        # Always the first key and one spelling of the URL: an empty material made
        # again by another key or URL is invisible to it (see the module docstring).
        return self.op(
            kind="create_material",
            material=ref,
            key="ann-key-1",
            metadata=dict(self.metadata[ref]),
            layers=stack,
        )

    def creation_phase(self) -> Phase:
        wave = []
        for ref in self.schedule.materials:
            first = self.material_create(ref)
            self.created[ref] = first
            wave.append(first.id)
            if self.stacked[ref] and self.rng.random() < 0.25:
                # The same material asked for twice at once, with different stacks.
                other = [self.layer_spec(ref, 1, other=True)]
                wave.append(self.material_create(ref, layers=other).id)
        waves = [wave] if self.rng.random() < 0.5 else [[op_id] for op_id in wave]
        return Phase(runs=[Run("main", waves)], faults=self.faults())

    def refs(self) -> list[str]:
        return [ref for ref in self.schedule.materials if ref.startswith("M")]

    def concurrent_layers(self) -> None:
        ref = self.rng.choice(self.refs())
        ops = [self.layer_op(ref) for _ in range(self.rng.randint(2, 4))]
        split = self.rng.randint(1, len(ops))
        waves = [[op.id for op in ops[:split]], [op.id for op in ops[split:]]]
        self.schedule.phases.append(
            Phase(runs=[Run("main", [wave for wave in waves if wave])], faults=self.faults())
        )

    def colleague_writes_into_mine(self) -> None:
        ref = self.rng.choice(self.refs())
        position = self.rng.randint(1, len(self.stacks[ref]) + 1)
        formula = self.rng.choice(FORMULAS)
        bob = self.op(
            kind="colleague_layer",
            material=ref,
            key="bob-key",
            layer_id=position,
            formula=formula,
            orientation=self.rng.choice(ORIENTATIONS),
        )
        ops = [self.layer_op(ref) for _ in range(self.rng.randint(1, 2))]
        self.schedule.phases.append(
            Phase(
                runs=[Run("main", [[op.id for op in ops]])],
                colleague=[bob.id],
                faults=self.faults(),
            )
        )

    def colleague_copies(self) -> None:
        ref = self.rng.choice(self.refs())
        theirs = f"C{len([r for r in self.schedule.materials if r.startswith('C')]) + 1}"
        self.schedule.materials[theirs] = self.schedule.materials[ref]
        copy = self.rng.choice(["at_creation", "afterwards", "not"])
        if not self.schedule.user_id:
            # Without her user_id on the block, a process that never saw Ann's material
            # cannot tell it from Bob's copy of its mark: the promise needs the user_id.
            copy = "not"
        bob = [
            self.op(
                kind="colleague_material",
                material=theirs,
                key="bob-key",
                same_name_as=ref,
                copy_from=ref if copy == "at_creation" else None,
                metadata={"bob": 1} if copy == "afterwards" else dict(self.metadata[ref]),
                layers=[{"layer_id": 1, "composition_string": "SrTiO3", "orientation": "001"}],
            )
        ]
        if copy == "afterwards":
            bob.append(
                self.op(
                    kind="colleague_copy_metadata", material=theirs, key="bob-key", copy_from=ref
                )
            )
        again = self.rerun(self.created[ref])
        if self.stacked[ref] and self.rng.random() < 0.3:
            again.refresh, again.host = True, self.host()
        ops = [again, self.layer_op(ref)]
        self.schedule.phases.append(
            Phase(
                runs=[Run(self.runner_for_rerun(ref), [[op.id] for op in ops])],
                colleague=[op.id for op in bob],
                faults=self.faults(),
            )
        )

    def runner_for_rerun(self, ref: str) -> str:
        """Main, or (sometimes) a process writer: another home, maybe another machine."""
        processes = self.processes()
        if processes and self.rng.random() < 0.5:
            return self.rng.choice(processes).name
        return "main"

    def update_then_create(self) -> None:
        ref = self.rng.choice(self.refs())
        self.revision += 1
        metadata = {**self.metadata[ref], "rev": self.revision}
        update = self.op(kind="update_material", material=ref, key=self.key(), metadata=metadata)
        self.metadata[ref] = metadata
        create = self.material_create(ref)
        self.created[ref] = create
        follow = self.layer_op(ref)
        self.schedule.phases.append(
            Phase(runs=[Run("main", [[update.id], [create.id], [follow.id]])], faults=self.faults())
        )

    def update_then_old_request(self) -> None:
        """An `if_exists="update"`, then the request from before it, again (from cache?)."""
        ref = self.rng.choice(self.refs())
        position = self.rng.randint(1, len(self.stacks[ref]))
        first = self.op(
            kind="create_layer",
            material=ref,
            layer_id=position,
            formula=self.stacks[ref][position][0],
            orientation=self.stacks[ref][position][1],
        )
        changed = self.rerun(
            first, formula=self.layer_spec(ref, position, other=True)["composition_string"]
        )
        changed.if_exists = "update"
        old = self.rerun(first)
        self.schedule.phases.append(
            Phase(runs=[Run("main", [[first.id], [changed.id]])], faults=self.faults())
        )
        self.schedule.phases.append(Phase(runs=[Run("main", [[old.id]])]))

    def reruns(self) -> None:
        candidates = [op for op in self.history if op.kind != "update_material"]
        picked = self.rng.sample(candidates, k=min(len(candidates), self.rng.randint(1, 3)))
        ops = []
        for original in picked:
            changes: dict[str, Any] = {"host": self.host()}
            if original.kind != "create_material" or original.layers is not None:
                if self.schedule.user_id and self.rng.random() < 0.4:
                    changes["key"] = self.rng.choice(["ann-key-2", "ann-key-rotated"])
                changes["refresh"] = self.rng.random() < 0.25
            else:
                changes = {}  # an empty material: the same key and URL, from the cache
            ops.append(self.rerun(original, **changes))
        waves = [[op.id for op in ops]] if self.rng.random() < 0.5 else [[op.id] for op in ops]
        self.schedule.phases.append(Phase(runs=[Run("main", waves)], faults=self.faults()))

    def processes_race(self) -> None:
        ref = self.rng.choice(self.refs())
        runs = []
        for writer in [self.schedule.writer("main"), *self.processes()]:
            ops = [self.layer_op(ref) for _ in range(self.rng.randint(1, 2))]
            runs.append(Run(writer.name, [[op.id] for op in ops]))
        self.schedule.phases.append(Phase(runs=runs, faults=self.faults()))

    def kill_and_rerun(self) -> None:
        # Not a writer without fcntl: how its successor learns that a killed holder's
        # lock file is stale is up to the internals, and may be a long wait.
        victims = [writer for writer in self.processes() if not writer.no_fcntl]
        if not victims:
            self.concurrent_layers()
            return
        ref = self.rng.choice(self.refs())
        victim = self.rng.choice(victims)
        if self.rng.random() < 0.3 and not self.stacked[ref]:
            ops = [self.rerun(self.created[ref]), self.create_layers(ref)]
        else:
            ops = [self.layer_op(ref) for _ in range(self.rng.randint(2, 3))]
        waves = [[op.id] for op in ops]
        kill = Signal(victim.name, "kill", delay=self.rng.choice([0.0, 0.05, 0.2, 0.5]))
        self.schedule.phases.append(
            Phase(runs=[Run(victim.name, waves)], faults=self.faults(kill=True), signals=[kill])
        )
        again = [self.rerun(op) for op in ops]
        rerunner = self.rng.choice([victim.name, "main"])
        self.schedule.phases.append(Phase(runs=[Run(rerunner, [[op.id] for op in again])]))

    def pause_past_lease(self) -> None:
        ref = self.rng.choice(self.refs())
        victim = self.rng.choice(self.processes())
        paused = self.create_layer(ref, key="ann-key-1")
        other = self.rerun(paused, host=self.host())
        stop = Signal(
            victim.name,
            "stop",
            trigger=self.rng.choice(["start", "listing"]),
            delay=self.rng.choice([0.0, 0.05, 0.2]),
            hold=self.schedule.lease + 1.5,
        )
        faults = None
        if stop.trigger == "listing":
            faults = FaultPlan(queue=["slow_before_commit"], methods=["GET"], slow_seconds=1.0)
        self.schedule.phases.append(
            Phase(
                runs=[
                    Run(victim.name, [[paused.id]]),
                    Run("main", [[other.id]], after_signal=True),
                ],
                faults=faults,
                signals=[stop],
            )
        )


def generate(seed: int) -> Schedule:
    """The random schedule of `seed`."""
    return _Generator(seed).build()
