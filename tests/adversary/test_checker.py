"""The checker's judgement on hand-made audits: what breaks the promise, what is excused.

No sandbox and no Prefect: each case is an audit (as `SandboxHandle.history` returns
it) and the ops' start and end events (as the writers report them), so that a change
to the checker that starts excusing a real violation, or flagging a documented
non-guarantee, fails here in a second.
"""

from __future__ import annotations

from typing import Any

import pytest

from adversary._checker import check
from adversary._model import Op, Schedule, Writer
from adversary._runner import RunRecord, WriterInfo

pytestmark = pytest.mark.adversary

ANN, BOB = "ann-uid", "bob-uid"
PREFIX = "adv0-abcdef"


class Audit:
    """Builds an audit and the ops' outcomes, one store call (txn) at a time."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.txn = 0
        self.ops: list[Op] = []
        self.outcomes: list[dict[str, Any]] = []

    def _entry(self, at: float, user: str, action: str, kind: str, **fields: Any) -> None:
        self.entries.append(
            {
                "seq": len(self.entries) + 1,
                "at": at,
                "txn": self.txn,
                "organisation": "lab",
                "user_id": user,
                "action": action,
                "kind": kind,
                "fault": fields.pop("fault", None),
                "gave_up_at": fields.pop("gave_up_at", None),
                **fields,
            }
        )

    def material(
        self, at: float, sample_id: int, *, user: str = ANN, meta: Any = None, **note: Any
    ) -> None:
        self.txn += 1
        row = {
            "sample_id": sample_id,
            "sample_name": f"{PREFIX}-M1",
            "substrate": "SrTiO3",
            "sample_metadata": meta or {"run": 1},
            "user_id": user,
        }
        self._entry(
            at, user, "insert", "material", record_id=sample_id, sample_id=sample_id,
            layer_id=None, row=row, **note,
        )  # fmt: skip

    def layer(
        self,
        at: float,
        record_id: int,
        sample_id: int,
        layer_id: int,
        *,
        user: str = ANN,
        action: str = "insert",
        formula: str = "BaTiO3",
        same_txn: bool = False,
        **note: Any,
    ) -> None:
        if not same_txn:
            self.txn += 1
        row = {
            "id": record_id,
            "sample_id": sample_id,
            "layer_id": layer_id,
            "composition_string": formula,
            "orientation": "001",
        }
        self._entry(
            at, user, action, "layer", record_id=record_id, sample_id=sample_id,
            layer_id=layer_id, row=row, **note,
        )  # fmt: skip

    def op(
        self,
        op_id: str,
        kind: str,
        writer: str,
        start: float,
        end: float | None,
        *,
        sample_id: int | None = 1,
        result: Any = None,
        status: str = "ok",
        state: str = "Completed",
    ) -> None:
        self.ops.append(Op(op_id, kind, "M1", layer_id=2, formula="BaTiO3"))  # type: ignore[arg-type]
        self.outcomes.append(
            {"op": op_id, "writer": writer, "event": "start", "at": start, "sample_id": sample_id}
        )
        if end is not None:
            self.outcomes.append(
                {
                    "op": op_id,
                    "writer": writer,
                    "event": "end",
                    "at": end,
                    "status": status,
                    "state": state,
                    "result": result,
                }
            )

    def judge(
        self, writers: dict[str, WriterInfo] | None = None, signals: Any = ()
    ) -> tuple[list[str], list[str]]:
        schedule = Schedule(seed=0, label="test", materials={"M1": "SrTiO3"}, ops=self.ops)
        schedule.writers = [Writer("main"), Writer("p1", process=True)]
        record = RunRecord(
            schedule=schedule,
            prefix=PREFIX,
            names={"M1": f"{PREFIX}-M1"},
            t0=0.0,
            seq0=0,
            outcomes=self.outcomes,
            writers=writers
            or {
                "main": WriterInfo("main", 0, "/home-0", None),
                "p1": WriterInfo("p1", 0, "/home-0", None),
            },
            signals=list(signals),
            refs={"M1": 1},
        )
        verdict = check(record, self.entries, ANN, BOB)
        return verdict.violations, verdict.excused


def _layer(record_id: int, layer_id: int = 2, formula: str = "BaTiO3") -> dict[str, Any]:
    return {
        "layer": True,
        "id": record_id,
        "layer_id": layer_id,
        "sample_id": 1,
        "composition_string": formula,
        "orientation": "001",
    }


def _material(sample_id: int) -> dict[str, Any]:
    return {
        "layer": False,
        "sample_id": sample_id,
        "sample_name": f"{PREFIX}-M1",
        "substrate": "SrTiO3",
        "sample_metadata": {"run": 1},
    }


def test_two_rows_of_ann_at_one_position_break_i1() -> None:
    audit = Audit()
    audit.material(1.0, 1)
    audit.op("op1", "create_layer", "main", 2.0, 2.5, result=_layer(10))
    audit.op("op2", "create_layer", "p1", 2.0, 2.6, result=_layer(11))
    audit.layer(2.2, 10, 1, 2)
    audit.layer(2.3, 11, 1, 2)
    violations, excused = audit.judge()
    assert [v.split(":")[0] for v in violations] == ["I1"] and not excused
    assert "L2 of Ann's M1 (sample 1) holds 2 rows" in violations[0]


def test_a_colleagues_row_beside_anns_is_fine_but_deleting_it_breaks_i2() -> None:
    audit = Audit()
    audit.material(1.0, 1)
    audit.layer(1.5, 10, 1, 2, user=BOB)
    audit.layer(2.0, 11, 1, 2)
    assert audit.judge() == ([], [])
    audit.layer(3.0, 10, 1, 2, action="delete")
    violations, _ = audit.judge()
    assert len(violations) == 1 and violations[0].startswith("I2: Ann's key deleted Bob's layer")


def test_a_row_committed_beyond_the_settle_window_is_excused() -> None:
    audit = Audit()
    audit.material(1.0, 1)
    audit.op("op1", "create_layer", "main", 2.0, 8.0, result=_layer(10))
    audit.layer(6.0, 10, 1, 2)
    audit.layer(7.0, 11, 1, 2, fault="commit_late", gave_up_at=2.4)  # 4.6 s late
    violations, excused = audit.judge()
    assert not violations and "beyond the 3 s settle window" in excused[0]


def test_a_late_row_inside_the_settle_window_is_not_excused() -> None:
    audit = Audit()
    audit.material(1.0, 1)
    audit.op("op1", "create_layer", "main", 2.0, 8.0, result=_layer(11))
    audit.layer(4.4, 10, 1, 2, fault="commit_late", gave_up_at=2.4)  # 2.0 s late
    audit.layer(4.5, 11, 1, 2)
    violations, excused = audit.judge()
    assert violations and violations[0].startswith("I1") and not excused


def test_writers_with_no_shared_lock_domain_are_excused_and_with_one_they_are_not() -> None:
    audit = Audit()
    audit.material(1.0, 1)
    audit.op("op1", "create_layer", "main", 2.0, 2.5, result=_layer(10))
    audit.op("op2", "create_layer", "p1", 2.0, 2.6, result=_layer(11))
    audit.layer(2.2, 10, 1, 2)
    audit.layer(2.3, 11, 1, 2)
    other_machine = {
        "main": WriterInfo("main", 0, "/home-0", None),
        "p1": WriterInfo("p1", 1, "/home-1", None),
    }
    violations, excused = audit.judge(other_machine)
    assert not violations and "share no lock domain" in excused[0]
    one_lock_server = {
        "main": WriterInfo("main", 0, "/home-0", "redis://x/0"),
        "p1": WriterInfo("p1", 1, "/home-1", "redis://x/0"),
    }
    violations, excused = audit.judge(one_lock_server)
    assert violations and not excused


def test_an_empty_material_whose_reply_was_lost_may_be_created_twice() -> None:
    audit = Audit()
    audit.op("op1", "create_material", "main", 1.0, 5.0, sample_id=None, result=_material(2))
    audit.material(1.1, 1, fault="drop_after_commit")
    audit.material(4.5, 2)
    violations, excused = audit.judge()
    assert not violations and "its create reply was lost (drop_after_commit)" in excused[0]


def test_an_empty_material_made_twice_with_its_reply_delivered_breaks_i1() -> None:
    audit = Audit()
    audit.op("op1", "create_material", "main", 1.0, 1.2, sample_id=None, result=_material(1))
    audit.op("op2", "create_material", "main", 2.0, 2.2, sample_id=None, result=_material(2))
    audit.material(1.1, 1)
    audit.material(2.1, 2)
    violations, excused = audit.judge()
    assert violations and violations[0].startswith("I1: Ann has 2 target materials")
    assert not excused


def test_a_listed_material_made_twice_is_not_excused_even_if_its_reply_was_lost() -> None:
    audit = Audit()
    audit.op("op1", "create_material", "main", 1.0, 5.0, sample_id=None, result=_material(2))
    audit.material(1.1, 1, fault="drop_after_commit")
    audit.layer(1.1, 5, 1, 1, same_txn=True)  # created with its layer: listed
    audit.material(4.5, 2)
    audit.layer(4.5, 6, 2, 1, same_txn=True)
    violations, excused = audit.judge()
    assert violations and not excused


def test_an_empty_material_made_again_from_another_prefect_home_is_excused() -> None:
    audit = Audit()
    audit.op("op1", "create_material", "main", 1.0, 1.2, sample_id=None, result=_material(1))
    audit.op("op2", "create_material", "p1", 2.0, 2.2, sample_id=None, result=_material(2))
    audit.material(1.1, 1)
    audit.material(2.1, 2)
    homes = {
        "main": WriterInfo("main", 0, "/home-0", None),
        "p1": WriterInfo("p1", 0, "/home-p1", None),
    }
    violations, excused = audit.judge(homes)
    assert not violations and "does not share" in excused[0]


def test_returning_a_colleagues_material_or_adding_to_it_breaks_i4() -> None:
    audit = Audit()
    audit.material(1.0, 1, user=BOB)
    audit.op("op1", "create_material", "main", 2.0, 2.2, sample_id=None, result=_material(1))
    audit.layer(2.5, 10, 1, 2)
    violations, _ = audit.judge()
    assert sorted(v.split(":")[0] for v in violations) == ["I4", "I4"]


def test_a_cached_layer_that_was_updated_since_breaks_i3() -> None:
    audit = Audit()
    audit.material(1.0, 1)
    audit.layer(1.5, 10, 1, 2)
    audit.layer(2.0, 10, 1, 2, action="update", formula="PbTiO3")
    audit.op("op1", "create_layer", "main", 1.4, 1.6, result=_layer(10))
    audit.op("op2", "create_layer", "main", 3.0, 3.1, result=_layer(10), state="Cached")
    violations, _ = audit.judge()
    assert len(violations) == 1 and violations[0].startswith("I3: op2 on main")
    assert "PbTiO3" in violations[0]


def test_a_third_material_must_be_excused_against_each_earlier_one() -> None:
    audit = Audit()
    audit.op("op1", "create_material", "main", 1.0, 5.0, sample_id=None, result=_material(2))
    audit.material(1.1, 1, fault="drop_after_commit")
    audit.material(4.5, 2)  # excused: 1's reply was lost
    audit.op("op2", "create_material", "main", 6.0, 6.2, sample_id=None, result=_material(3))
    audit.material(6.1, 3)  # 2's reply was delivered, to this very writer
    violations, excused = audit.judge()
    assert len(excused) == 1 and len(violations) == 1
    assert violations[0].startswith("I1: Ann has 3 target materials")


def test_a_third_row_must_be_excused_against_each_earlier_one() -> None:
    audit = Audit()
    audit.material(1.0, 1)
    audit.op("op1", "create_layer", "main", 2.0, 8.0, result=_layer(10))
    audit.layer(6.0, 10, 1, 2)
    audit.layer(7.0, 11, 1, 2, fault="commit_late", gave_up_at=2.4)  # excused: 4.6 s late
    audit.op("op2", "create_layer", "main", 9.0, 9.2, result=_layer(12))
    audit.layer(9.1, 12, 1, 2)
    violations, excused = audit.judge()
    assert len(excused) == 1 and len(violations) == 1
    assert violations[0].startswith("I1: L2 of Ann's M1 (sample 1) holds 3 rows")
