"""SQLite storage of the sandbox's target materials, layers and physical samples.

One connection, guarded by a lock, serves every thread: the server's event loop writes
through it and tests read through it to check what was stored. Opening a connection per
request would cost more than the request itself; SQLite serialises writers anyway.

Every operation the API offers takes the caller's organisation and never touches
another organisation's rows. The `*_rows`/`count_*` readers at the end are for tests and
ignore organisations unless asked.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "WRITE_NOTE",
    "LayerIdTakenError",
    "LayerValues",
    "PhysicalSampleNameTakenError",
    "PhysicalSampleNotFoundError",
    "SampleNotFoundError",
    "SandboxStore",
    "WriteNote",
    "organisation_user_id",
    "physical_sample_name_key",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS target_materials (
    sample_id INTEGER PRIMARY KEY AUTOINCREMENT,
    organisation TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sample_name TEXT NOT NULL,
    substrate TEXT NOT NULL,
    sample_metadata TEXT,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS target_materials_by_organisation
    ON target_materials (organisation, sample_id);
CREATE TABLE IF NOT EXISTS layers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    organisation TEXT NOT NULL,
    sample_id INTEGER REFERENCES target_materials (sample_id),
    layer_id INTEGER NOT NULL,
    composition_string TEXT,
    element_dict TEXT,
    orientation TEXT,
    space_group TEXT,
    mp_id TEXT
);
CREATE INDEX IF NOT EXISTS layers_by_position ON layers (sample_id, layer_id);
CREATE TABLE IF NOT EXISTS physical_samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    organisation TEXT NOT NULL,
    user_id TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    created_datetime TEXT NOT NULL,
    last_updated TEXT NOT NULL,
    version INTEGER NOT NULL,
    growth_instrument_id INTEGER,
    sample_id INTEGER REFERENCES target_materials (sample_id),
    detail_notes_id,
    physical_sample_metadata TEXT,
    UNIQUE (organisation, name_key)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    txn INTEGER NOT NULL,
    organisation TEXT NOT NULL,
    user_id TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    record_id INTEGER NOT NULL,  -- a physical sample's UUID stays text: not a number
    sample_id INTEGER,
    layer_id INTEGER,
    row TEXT NOT NULL,
    fault TEXT,
    gave_up_at REAL
);
"""

# The audit triggers: TEMP, so that they live on this connection only, beside the
# functions they call (a trigger stored in the file would break any other connection).
_LAYER_JSON = (
    "json_object('id', {r}.id, 'sample_id', {r}.sample_id, 'layer_id', {r}.layer_id,"
    " 'composition_string', {r}.composition_string, 'element_dict', json({r}.element_dict),"
    " 'orientation', {r}.orientation, 'space_group', {r}.space_group, 'mp_id', {r}.mp_id)"
)
_MATERIAL_JSON = (
    "json_object('sample_id', {r}.sample_id, 'user_id', {r}.user_id, 'sample_name',"
    " {r}.sample_name, 'substrate', {r}.substrate, 'sample_metadata',"
    " json({r}.sample_metadata), 'version', {r}.version, 'last_updated', {r}.last_updated)"
)
# `detail_notes_id` has no declared type, so it keeps the JSON type it was sent as.
_PHYSICAL_SAMPLE_JSON = (
    "json_object('id', {r}.id, 'name', {r}.name, 'created_datetime', {r}.created_datetime,"
    " 'last_updated', {r}.last_updated, 'version', {r}.version, 'user_id', {r}.user_id,"
    " 'growth_instrument_id', {r}.growth_instrument_id, 'sample_id', {r}.sample_id,"
    " 'detail_notes_id', {r}.detail_notes_id, 'physical_sample_metadata',"
    " json({r}.physical_sample_metadata))"
)
_AUDIT_ROWS = {
    "layer": _LAYER_JSON,
    "material": _MATERIAL_JSON,
    "physical_sample": _PHYSICAL_SAMPLE_JSON,
}
_AUDIT_TRIGGER = """
CREATE TEMP TRIGGER IF NOT EXISTS audit_{kind}_{action} AFTER {event} ON main.{table}
BEGIN
    INSERT INTO audit (at, txn, organisation, user_id, action, kind, record_id, sample_id,
                       layer_id, row, fault, gave_up_at)
    VALUES (audit_at(), audit_txn(), {r}.organisation, audit_user(), '{action}', '{kind}',
            {r}.{record}, {r}.sample_id, {layer_id}, {row}, audit_fault(), audit_gave_up());
END;
"""
_AUDIT_TRIGGERS = "".join(
    _AUDIT_TRIGGER.format(
        kind=kind,
        action=action,
        event=event,
        table=table,
        r=r,
        record=record,
        layer_id=f"{r}.layer_id" if kind == "layer" else "NULL",
        row=_AUDIT_ROWS[kind].format(r=r),
    )
    for kind, table, record in (
        ("layer", "layers", "id"),
        ("material", "target_materials", "sample_id"),
        # The audit's `sample_id` of a physical sample is its linked target material.
        ("physical_sample", "physical_samples", "id"),
    )
    for action, event, r in (
        ("insert", "INSERT", "NEW"),
        ("update", "UPDATE", "NEW"),
        ("delete", "DELETE", "OLD"),
    )
)
_SELECT_AUDIT = (
    "SELECT seq, at, txn, organisation, user_id, action, kind, record_id, sample_id,"
    " layer_id, row, fault, gave_up_at FROM audit"
)


@dataclass(frozen=True)
class WriteNote:
    """What fault injection did to the request whose write the store is about to make.

    Set by the fault middleware in the request's context (`WRITE_NOTE`) and copied into
    the audit entries of that write, so that a test can tell a write committed after its
    client gave up from an ordinary one.

    Attributes:
        fault: The injected fault's kind, e.g. `commit_late`.
        gave_up_at: For a write committed after the client gave up: when it did (the
            server's `time.monotonic()`); otherwise `None`.
    """

    fault: str
    gave_up_at: float | None = None


WRITE_NOTE: ContextVar[WriteNote | None] = ContextVar("atomscale_sandbox_write_note", default=None)
"""The `WriteNote` of the request being served, if fault injection touched it."""


class _AuditState:
    """Who is writing now and how, read by the audit triggers; set with the store's lock held.

    Kept apart from the store so that the SQL functions, which SQLite holds on to, do not
    keep the store (and its finalizer) alive.
    """

    def __init__(self) -> None:
        self.user_id = ""
        self.note: WriteNote | None = None
        self.txn = 0

    def begin(self, user_id: str) -> None:
        self.user_id = user_id
        self.note = WRITE_NOTE.get()
        self.txn += 1

    def register(self, db: sqlite3.Connection) -> None:
        db.create_function("audit_at", 0, time.monotonic)
        db.create_function("audit_txn", 0, lambda: self.txn)
        db.create_function("audit_user", 0, lambda: self.user_id)
        db.create_function("audit_fault", 0, lambda: self.note.fault if self.note else None)
        db.create_function("audit_gave_up", 0, lambda: self.note.gave_up_at if self.note else None)


# The reference's example shows `version` as a dotted string ("0.269.1"), not a number;
# the sandbox keeps a revision counter and shows it as the last part of such a string.
VERSION_PREFIX = "0.269."

# SQL text is only ever built from these constants and from column names checked
# against the _PATCHABLE_* sets; request values are always bound as parameters.
_LAYER_COLUMNS = (
    "id, layer_id, sample_id, composition_string, element_dict, orientation, space_group, mp_id"
)
_MATERIAL_COLUMNS = (
    "sample_id, sample_name, substrate, sample_metadata, user_id, version, last_updated"
)
_SELECT_LAYER = f"SELECT {_LAYER_COLUMNS} FROM layers WHERE id = ?"  # noqa: S608
_SELECT_LAYER_ROWS = f"SELECT organisation, {_LAYER_COLUMNS} FROM layers"  # noqa: S608
_SELECT_MATERIAL = f"SELECT {_MATERIAL_COLUMNS} FROM target_materials"  # noqa: S608
_SELECT_MATERIAL_ROWS = f"SELECT organisation, {_MATERIAL_COLUMNS} FROM target_materials"  # noqa: S608
# The listing of GET /target-materials/: (field, column, holds JSON text) per field,
# in the order the API documents. Both queries below are built from it.
_LISTED = (
    ("id", "l.id", False),
    ("sample_id", "m.sample_id", False),
    ("sample_name", "m.sample_name", False),
    ("substrate", "m.substrate", False),
    ("layer_id", "l.layer_id", False),
    ("composition_string", "l.composition_string", False),
    ("element_dict", "l.element_dict", True),
    ("orientation", "l.orientation", False),
    ("space_group", "l.space_group", False),
    ("mp_id", "l.mp_id", False),
    ("sample_metadata", "m.sample_metadata", True),
    ("user_id", "m.user_id", False),
    ("version", f"'{VERSION_PREFIX}' || m.version", False),
    ("last_updated", "m.last_updated", False),
)
_LISTED_FROM = (
    " FROM target_materials m {join} layers l ON l.sample_id = m.sample_id"
    " WHERE m.organisation = ? ORDER BY m.sample_id, l.layer_id, l.id"
)
_LIST_ROWS = (
    "SELECT " + ", ".join(f"{column} AS {field}" for field, column, _ in _LISTED) + _LISTED_FROM
)
# The same listing encoded as one JSON array by SQLite itself: a large organisation's
# listing then costs no Python work per row. `json()` embeds the stored JSON columns as
# JSON rather than as strings.
_LIST_ROWS_JSON = (
    "SELECT coalesce(json_group_array(json(row)), '[]') FROM (SELECT json_object("  # noqa: S608
    + ", ".join(
        f"'{field}', " + (f"json({column})" if is_json else column)
        for field, column, is_json in _LISTED
    )
    + ") AS row"
    + _LISTED_FROM
    + ")"
)
_INSERT_LAYER = (
    "INSERT INTO layers (id, organisation, sample_id, layer_id, composition_string,"
    " element_dict, orientation, space_group, mp_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_LAYER_IF_OWNED = (
    "INSERT INTO layers (id, organisation, sample_id, layer_id, composition_string,"
    " element_dict, orientation, space_group, mp_id) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
    " WHERE EXISTS (SELECT 1 FROM target_materials WHERE organisation = ? AND sample_id = ?)"
)
# Columns a layer PATCH may set; anything else in a change set is a bug in the caller.
_PATCHABLE_LAYER_COLUMNS = frozenset(
    {"composition_string", "element_dict", "orientation", "space_group", "mp_id"}
)
_PATCHABLE_MATERIAL_COLUMNS = frozenset({"sample_name", "substrate", "sample_metadata"})
_PATCHABLE_PHYSICAL_SAMPLE_COLUMNS = frozenset(
    {"name", "growth_instrument_id", "detail_notes_id", "physical_sample_metadata"}
)
# A physical sample as create and update answer it, in the order the API documents.
_PHYSICAL_SAMPLE_COLUMNS = (
    "id, name, created_datetime, last_updated, version, user_id, growth_instrument_id,"
    " sample_id, detail_notes_id, physical_sample_metadata"
)
_SELECT_PHYSICAL_SAMPLE = (
    f"SELECT {_PHYSICAL_SAMPLE_COLUMNS} FROM physical_samples"  # noqa: S608
    " WHERE organisation = ? AND id = ?"
)
_SELECT_PHYSICAL_SAMPLE_ROWS = (
    f"SELECT organisation, {_PHYSICAL_SAMPLE_COLUMNS} FROM physical_samples"  # noqa: S608
)
# The listing of GET /physical_samples/: the linked target material is joined in, so
# that a renamed material shows its new name.
_LIST_PHYSICAL_SAMPLES = (
    "SELECT p.id, p.name, p.created_datetime, p.last_updated, p.version, p.user_id,"
    " p.growth_instrument_id, p.sample_id, p.detail_notes_id, p.physical_sample_metadata,"
    " p.owner_name, m.sample_id AS material_id, m.sample_name AS material_name,"
    " m.substrate AS material_substrate"
    " FROM physical_samples p LEFT JOIN target_materials m"
    " ON m.sample_id = p.sample_id AND m.organisation = p.organisation"
    " WHERE p.organisation = ?"
)
_USER_ID_NAMESPACE = uuid.UUID("6f1c1f9e-7f0e-4d57-9a43-3c8d1b0c5a11")


class SampleNotFoundError(LookupError):
    """No target material with this id belongs to the caller's organisation."""

    def __init__(self, sample_id: int) -> None:
        super().__init__(f"Target material {sample_id} not found")
        self.sample_id = sample_id


class PhysicalSampleNotFoundError(LookupError):
    """No physical sample with this id belongs to the caller's organisation."""

    def __init__(self, physical_sample_id: str) -> None:
        super().__init__(f"Physical sample {physical_sample_id} not found")
        self.physical_sample_id = physical_sample_id


class PhysicalSampleNameTakenError(Exception):
    """Another physical sample of the organisation has this name (trimmed, ignoring case).

    Attributes:
        physical_sample_id: The id of the sample that has the name.
        name: The name asked for, trimmed.
    """

    def __init__(self, physical_sample_id: str, name: str) -> None:
        # The wording of the service's own 409 detail.
        super().__init__("Physical sample name already exists")
        self.physical_sample_id = physical_sample_id
        self.name = name


class LayerIdTakenError(Exception):
    """A layer asked for an explicit `id` that another layer already has."""

    def __init__(self, layer_record_id: int) -> None:
        super().__init__(f"Layer id {layer_record_id} is already taken")
        self.layer_record_id = layer_record_id


@dataclass(frozen=True)
class LayerValues:
    """A layer ready to store: derived fields already filled in.

    Attributes:
        layer_id: Position in the stack.
        sample_id: Parent target material, or `None` for an unattached layer.
        composition_string: Formula.
        element_dict: Element -> amount.
        orientation: Orientation as given.
        space_group: Hermann-Mauguin symbol.
        mp_id: Materials Project id.
        id: Explicit record id, or `None` to let the store number it.
    """

    layer_id: int
    sample_id: int | None
    composition_string: str | None = None
    element_dict: Mapping[str, int | float] | None = None
    orientation: str | None = None
    space_group: str | None = None
    mp_id: str | None = None
    id: int | None = None


def organisation_user_id(organisation: str, user: str | None = None) -> str:
    """The stable `user_id` shown on the records a person of an organisation creates.

    Args:
        organisation: Organisation name.
        user: The person within it; `None` for the organisation's default user.

    Returns:
        A UUID string, the same for the same names in every run.
    """
    name = organisation if user is None else f"{organisation}\0{user}"
    return str(uuid.uuid5(_USER_ID_NAMESPACE, name))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def physical_sample_name_key(name: str) -> str:
    """The form in which physical-sample names must be unique within an organisation.

    Trimmed and lower-cased, the comparison the official SDK makes when it looks a
    sample up by name (`str.strip` and `str.lower`), so the SDK finds exactly the
    sample whose name the sandbox refuses to repeat.

    Args:
        name: A name as sent.

    Returns:
        The key the uniqueness constraint is on.
    """
    return name.strip().lower()


def _physical_sample_reply(row: sqlite3.Row) -> dict[str, Any]:
    sample = dict(row)
    sample["physical_sample_metadata"] = _load(sample["physical_sample_metadata"])
    sample["version"] = f"{VERSION_PREFIX}{sample['version']}"
    return sample


def _layer_reply(row: sqlite3.Row) -> dict[str, Any]:
    layer = dict(row)
    layer["element_dict"] = _load(layer["element_dict"])
    return layer


def _material_reply(row: sqlite3.Row) -> dict[str, Any]:
    material = dict(row)
    material["sample_metadata"] = _load(material["sample_metadata"])
    material["version"] = f"{VERSION_PREFIX}{material['version']}"
    material["detail_notes_id"] = None
    return material


class SandboxStore:
    """The sandbox's database: target materials, their layers and physical samples.

    Args:
        path: SQLite file to use, created if missing; records in it survive a restart.
            `None` uses a file in a new temporary directory, deleted on `close`, so
            that the store behaves the same (WAL and all) either way.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self._temporary_dir: str | None = None
        if path is None:
            self._temporary_dir = tempfile.mkdtemp(prefix="atomscale-sandbox-")
            path = Path(self._temporary_dir, "sandbox.db")
        self.path = Path(path)
        self._lock = threading.Lock()
        # check_same_thread=False because the lock, not the thread, guards the
        # connection; isolation_level=None so that transactions are exactly the
        # BEGIN/COMMIT below and not the sqlite3 module's implicit ones.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL writes each commit to the WAL before COMMIT returns but
        # fsyncs only at checkpoints: a commit survives the process being killed
        # (what a restart test and a crashed sandbox need) and the file is never
        # corrupted, but a power cut may lose the last commits. FULL would fsync on
        # every commit, which at the ~1,500 writes/s benchmarks need would be the
        # bottleneck, and a stand-in server has no data worth that price.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._audit = _AuditState()
        self._audit.register(self._db)
        self._db.executescript(_AUDIT_TRIGGERS)
        self._cleanup = weakref.finalize(self, _close_and_remove, self._db, self._temporary_dir)

    def close(self) -> None:
        """Close the database; a temporary one is deleted. Safe to call twice."""
        with self._lock:
            self._cleanup()

    @contextmanager
    def _transaction(self, writer: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._audit.begin(writer)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- the API's operations, each for one organisation -------------------------------

    def create_target_material(
        self,
        organisation: str,
        sample_name: str,
        substrate: str,
        sample_metadata: Mapping[str, Any] | None,
        layers: Sequence[LayerValues],
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Store a new target material and its layers, all or nothing.

        Args:
            organisation: Owner.
            user_id: The creator's `user_id`; `None` for the organisation's default user.
            sample_name: Name.
            substrate: Substrate.
            sample_metadata: Free-form JSON object.
            layers: Layers to add to it; their `sample_id` is ignored.

        Returns:
            The target material as the API returns it.

        Raises:
            LayerIdTakenError: A layer's explicit id is taken; nothing is stored.
        """
        user_id = user_id or organisation_user_id(organisation)
        with self._transaction(user_id) as db:
            cursor = db.execute(
                "INSERT INTO target_materials (organisation, user_id, sample_name, substrate,"
                " sample_metadata, version, last_updated) VALUES (?, ?, ?, ?, ?, 1, ?)",
                (
                    organisation,
                    user_id,
                    sample_name,
                    substrate,
                    _dump(sample_metadata),
                    _now(),
                ),
            )
            sample_id = cursor.lastrowid
            assert sample_id is not None
            for layer in layers:
                self._insert_layer(db, organisation, layer, sample_id)
            return self._material(db, organisation, sample_id)

    def add_layer(
        self, organisation: str, layer: LayerValues, *, user_id: str | None = None
    ) -> dict[str, Any]:
        """Store one more layer; a second one at the same position is stored too.

        Args:
            organisation: Owner.
            layer: The layer; its `sample_id` must be one of the organisation's target
                materials, or `None`.
            user_id: The writer's `user_id`, for the audit; `None` for the
                organisation's default user.

        Returns:
            The layer as the API returns it.

        Raises:
            SampleNotFoundError: `sample_id` is not one of the organisation's.
            LayerIdTakenError: The explicit `id` is taken.
        """
        # The hot path of every load test, so one statement (autocommitted, as atomic
        # as a transaction) instead of BEGIN, a check, the insert and COMMIT: the
        # insert happens only if the target material is the organisation's.
        element_dict = None if layer.element_dict is None else dict(layer.element_dict)
        values = (
            layer.id,
            organisation,
            layer.sample_id,
            layer.layer_id,
            layer.composition_string,
            _dump(element_dict),
            layer.orientation,
            layer.space_group,
            layer.mp_id,
        )
        with self._lock:
            self._audit.begin(user_id or organisation_user_id(organisation))
            try:
                if layer.sample_id is None:
                    cursor = self._db.execute(_INSERT_LAYER, values)
                else:
                    owner = (organisation, layer.sample_id)
                    cursor = self._db.execute(_INSERT_LAYER_IF_OWNED, (*values, *owner))
            except sqlite3.IntegrityError as exc:
                # The only constraint an insert of an owned material can break.
                if layer.id is not None and "layers.id" in str(exc):
                    raise LayerIdTakenError(layer.id) from exc
                raise
        if layer.sample_id is not None and cursor.rowcount == 0:
            raise SampleNotFoundError(layer.sample_id)
        return {
            "id": cursor.lastrowid,
            "layer_id": layer.layer_id,
            "sample_id": layer.sample_id,
            "composition_string": layer.composition_string,
            "element_dict": element_dict,
            "orientation": layer.orientation,
            "space_group": layer.space_group,
            "mp_id": layer.mp_id,
        }

    def update_layer(
        self,
        organisation: str,
        sample_id: int,
        layer_id: int,
        changes: Mapping[str, Any],
        *,
        user_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Change the fields in `changes` of the layer at `(sample_id, layer_id)`.

        If duplicates share that position, only the oldest (lowest `id`) changes, as a
        service that looks up "the" layer with a `LIMIT 1` query would do.

        Args:
            organisation: Owner.
            sample_id: Target material of the layer.
            layer_id: Position of the layer.
            changes: Column -> new value, for the layer columns a client may change.
            user_id: The writer's `user_id`, for the audit; `None` for the
                organisation's default user.

        Returns:
            The changed layer, or `None` if the organisation has no such layer.
        """
        unknown = set(changes) - _PATCHABLE_LAYER_COLUMNS
        if unknown:
            raise ValueError(f"not patchable layer columns: {sorted(unknown)}")
        with self._transaction(user_id or organisation_user_id(organisation)) as db:
            row = db.execute(
                "SELECT id FROM layers WHERE organisation = ? AND sample_id = ? AND layer_id = ?"
                " ORDER BY id LIMIT 1",
                (organisation, sample_id, layer_id),
            ).fetchone()
            if row is None:
                return None
            if changes:
                values = {
                    column: _dump(value) if column == "element_dict" else value
                    for column, value in changes.items()
                }
                assignments = ", ".join(f"{column} = ?" for column in values)
                update = f"UPDATE layers SET {assignments} WHERE id = ?"  # noqa: S608
                db.execute(update, (*values.values(), row["id"]))
            return _layer_reply(db.execute(_SELECT_LAYER, (row["id"],)).fetchone())

    def replace_layers(
        self,
        organisation: str,
        sample_id: int,
        layers: Sequence[LayerValues],
        *,
        user_id: str | None = None,
    ) -> None:
        """Make `layers` the whole stack of a target material, all or nothing.

        Args:
            organisation: Owner.
            sample_id: The target material; the layers' own `sample_id` is ignored.
            layers: The new stack.
            user_id: The writer's `user_id`, for the audit; `None` for the
                organisation's default user.

        Raises:
            SampleNotFoundError: `sample_id` is not one of the organisation's.
            LayerIdTakenError: A layer's explicit id is taken by a layer outside this
                stack (or twice within it); nothing changes.
        """
        with self._transaction(user_id or organisation_user_id(organisation)) as db:
            self._require_material(db, organisation, sample_id)
            db.execute("DELETE FROM layers WHERE sample_id = ?", (sample_id,))
            for layer in layers:
                self._insert_layer(db, organisation, layer, sample_id)

    def update_target_material(
        self,
        organisation: str,
        sample_id: int,
        changes: Mapping[str, Any],
        *,
        user_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Change a target material's fields in `changes`, bumping its version.

        Args:
            organisation: Owner.
            sample_id: The target material.
            changes: Column -> new value, among `sample_name`, `substrate`,
                `sample_metadata`; may be empty (the version is bumped all the same).
            user_id: The writer's `user_id`, for the audit; `None` for the
                organisation's default user.

        Returns:
            The changed target material, or `None` if the organisation has no such one.
        """
        unknown = set(changes) - _PATCHABLE_MATERIAL_COLUMNS
        if unknown:
            raise ValueError(f"not patchable target-material columns: {sorted(unknown)}")
        values = {
            column: _dump(value) if column == "sample_metadata" else value
            for column, value in changes.items()
        }
        assignments = "".join(f"{column} = ?, " for column in values)
        update = (
            f"UPDATE target_materials SET {assignments}version = version + 1,"  # noqa: S608
            " last_updated = ? WHERE organisation = ? AND sample_id = ?"
        )
        with self._transaction(user_id or organisation_user_id(organisation)) as db:
            updated = db.execute(update, (*values.values(), _now(), organisation, sample_id))
            if updated.rowcount == 0:
                return None
            return self._material(db, organisation, sample_id)

    def create_physical_sample(
        self,
        organisation: str,
        name: str,
        *,
        growth_instrument_id: int | None = None,
        sample_id: int | None = None,
        detail_notes_id: int | str | None = None,
        user_id: str | None = None,
        owner_name: str | None = None,
    ) -> dict[str, Any]:
        """Store a new physical sample (growth run) under a name new to the organisation.

        The check for the name and the insert are one transaction under the store's
        lock, so of several creates of one name exactly one succeeds.

        Args:
            organisation: Owner.
            name: Its name; stored trimmed.
            growth_instrument_id: Its growth instrument, if any.
            sample_id: The target material it aims for; must be the organisation's.
            detail_notes_id: Its notes' id, stored as given.
            user_id: The creator's `user_id`; `None` for the organisation's default user.
            owner_name: The creator's display name; the organisation's name if `None`.

        Returns:
            The physical sample as the API's create answers it.

        Raises:
            ValueError: The name is blank.
            SampleNotFoundError: `sample_id` is not one of the organisation's.
            PhysicalSampleNameTakenError: The organisation has a sample of this name,
                trimmed and ignoring case; nothing is stored.
        """
        name = name.strip()
        if not name:
            raise ValueError("a physical sample needs a name that is not blank")
        user_id = user_id or organisation_user_id(organisation)
        record_id, now = str(uuid.uuid4()), _now()
        with self._transaction(user_id) as db:
            if sample_id is not None:
                self._require_material(db, organisation, sample_id)
            self._require_free_name(db, organisation, name, None)
            db.execute(
                "INSERT INTO physical_samples (id, organisation, user_id, owner_name, name,"
                " name_key, created_datetime, last_updated, version, growth_instrument_id,"
                " sample_id, detail_notes_id, physical_sample_metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, NULL)",
                (
                    record_id,
                    organisation,
                    user_id,
                    owner_name or organisation,
                    name,
                    physical_sample_name_key(name),
                    now,
                    now,
                    growth_instrument_id,
                    sample_id,
                    detail_notes_id,
                ),
            )
            return self._physical_sample(db, organisation, record_id)

    def list_physical_samples(
        self,
        organisation: str,
        *,
        physical_sample_id: str | None = None,
        has_data_item: bool | None = None,
    ) -> list[dict[str, Any]]:
        """The listing of `GET /physical_samples/`, oldest first.

        Args:
            organisation: Whose samples.
            physical_sample_id: Only this one (canonical lowercase UUID text); another
                organisation's gives an empty list.
            has_data_item: `True` for only samples with data items (the sandbox stores
                none, so none), `False` for only those without (all); `None` for all.

        Returns:
            One dict per sample: the create reply's fields plus `owner_id`,
            `owner_name`, `num_data_items`, `growth_instrument`, `target_material` (the
            linked material as it is now), `projects` and `detail_notes`.
        """
        if has_data_item:
            return []
        query, parameters = _LIST_PHYSICAL_SAMPLES, [organisation]
        if physical_sample_id is not None:
            query += " AND p.id = ?"
            parameters.append(physical_sample_id)
        with self._lock:
            rows = self._db.execute(f"{query} ORDER BY p.seq", parameters).fetchall()
        listing = []
        for row in rows:
            entry = dict(row)
            material_id = entry.pop("material_id")
            material_name = entry.pop("material_name")
            material_substrate = entry.pop("material_substrate")
            owner_name = entry.pop("owner_name")
            instrument = entry["growth_instrument_id"]
            listing.append(
                {
                    **entry,
                    "version": f"{VERSION_PREFIX}{entry['version']}",
                    "physical_sample_metadata": _load(entry["physical_sample_metadata"]),
                    "owner_id": entry["user_id"],
                    "owner_name": owner_name,
                    "num_data_items": 0,
                    "growth_instrument": None if instrument is None else {"id": instrument},
                    "target_material": None
                    if material_id is None
                    else {
                        "sample_id": material_id,
                        "sample_name": material_name,
                        "substrate": material_substrate,
                    },
                    "projects": [],
                    "detail_notes": None,
                }
            )
        return listing

    def link_target_material(
        self,
        organisation: str,
        physical_sample_id: str,
        target_material_id: int | None,
        *,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Link a physical sample to one of the organisation's target materials, or unlink it.

        The version is bumped even when the link was already so, as the target-material
        PATCH bumps it for an empty change: every accepted write is a new version.

        Args:
            organisation: Owner.
            physical_sample_id: The physical sample (canonical lowercase UUID text).
            target_material_id: The target material, or `None` to unlink.
            user_id: The writer's `user_id`, for the audit; `None` for the
                organisation's default user.

        Returns:
            The physical sample as the API's create answers it.

        Raises:
            PhysicalSampleNotFoundError: The organisation has no such physical sample.
            SampleNotFoundError: `target_material_id` is not one of the organisation's.
        """
        with self._transaction(user_id or organisation_user_id(organisation)) as db:
            self._require_physical_sample(db, organisation, physical_sample_id)
            if target_material_id is not None:
                self._require_material(db, organisation, target_material_id)
            db.execute(
                "UPDATE physical_samples SET sample_id = ?, version = version + 1,"
                " last_updated = ? WHERE organisation = ? AND id = ?",
                (target_material_id, _now(), organisation, physical_sample_id),
            )
            return self._physical_sample(db, organisation, physical_sample_id)

    def update_physical_sample(
        self,
        organisation: str,
        physical_sample_id: str,
        changes: Mapping[str, Any],
        *,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Change a physical sample's fields in `changes`, bumping its version.

        Args:
            organisation: Owner.
            physical_sample_id: The physical sample (canonical lowercase UUID text).
            changes: Column -> new value, among `name` (stored trimmed, unique again),
                `growth_instrument_id`, `detail_notes_id` and `physical_sample_metadata`;
                may be empty (the version is bumped all the same).
            user_id: The writer's `user_id`, for the audit; `None` for the
                organisation's default user.

        Returns:
            The changed physical sample as the API answers it.

        Raises:
            ValueError: A column that may not be changed, or a blank name.
            PhysicalSampleNotFoundError: The organisation has no such physical sample.
            PhysicalSampleNameTakenError: Another of the organisation's samples has the
                new name (trimmed, ignoring case); nothing changes.
        """
        unknown = set(changes) - _PATCHABLE_PHYSICAL_SAMPLE_COLUMNS
        if unknown:
            raise ValueError(f"not patchable physical-sample columns: {sorted(unknown)}")
        values = dict(changes)
        if "physical_sample_metadata" in values:
            values["physical_sample_metadata"] = _dump(values["physical_sample_metadata"])
        if "name" in values:
            values["name"] = str(values["name"]).strip()
            if not values["name"]:
                raise ValueError("a physical sample needs a name that is not blank")
            values["name_key"] = physical_sample_name_key(values["name"])
        assignments = "".join(f"{column} = ?, " for column in values)
        update = (
            f"UPDATE physical_samples SET {assignments}version = version + 1,"  # noqa: S608
            " last_updated = ? WHERE organisation = ? AND id = ?"
        )
        with self._transaction(user_id or organisation_user_id(organisation)) as db:
            self._require_physical_sample(db, organisation, physical_sample_id)
            if "name" in values:
                self._require_free_name(db, organisation, values["name"], physical_sample_id)
            db.execute(update, (*values.values(), _now(), organisation, physical_sample_id))
            return self._physical_sample(db, organisation, physical_sample_id)

    def list_rows(self, organisation: str, *, include_empty: bool) -> list[dict[str, Any]]:
        """The listing of `GET /target-materials/` as dicts, one row per attached layer.

        The route sends `list_rows_json`; this decoding in Python is for reading the
        listing in code and tests.

        Args:
            organisation: Whose records.
            include_empty: Also list each target material without layers, as one row
                with null layer fields.

        Returns:
            Rows ordered by target material, then position, then record id.
        """
        query = _LIST_ROWS.format(join="LEFT JOIN" if include_empty else "JOIN")
        with self._lock:
            rows = self._db.execute(query, (organisation,)).fetchall()
        listing = []
        for row in rows:
            entry = dict(row)
            entry["element_dict"] = _load(entry["element_dict"])
            entry["sample_metadata"] = _load(entry["sample_metadata"])
            listing.append(entry)
        return listing

    def list_rows_json(self, organisation: str, *, include_empty: bool) -> str:
        """`list_rows` encoded as a JSON array by SQLite, the body `GET` sends.

        Args:
            organisation: Whose records.
            include_empty: As for `list_rows`.

        Returns:
            JSON text; `json.loads` of it equals `list_rows(...)`.
        """
        query = _LIST_ROWS_JSON.format(join="LEFT JOIN" if include_empty else "JOIN")
        with self._lock:
            (text,) = self._db.execute(query, (organisation,)).fetchone()
        return str(text)

    def fill(self, organisation: str, rows: int, *, layers_per_material: int = 10) -> None:
        """Add `rows` listed rows to an organisation, as a large shared account has.

        Makes target materials named `filler-N` on SrTiO3, each with up to
        `layers_per_material` layers, in one transaction: a 50,000-row organisation
        takes about a second.

        Args:
            organisation: Whose records.
            rows: How many layers to add in all.
            layers_per_material: Layers per target material.
        """
        if rows < 0 or layers_per_material < 1:
            raise ValueError("rows must be >= 0 and layers_per_material >= 1")
        user_id, now = organisation_user_id(organisation), _now()
        with self._transaction(user_id) as db:
            start = 0
            while start < rows:
                count = min(layers_per_material, rows - start)
                cursor = db.execute(
                    "INSERT INTO target_materials (organisation, user_id, sample_name, substrate,"
                    " sample_metadata, version, last_updated) VALUES (?, ?, ?, ?, ?, 1, ?)",
                    (
                        organisation,
                        user_id,
                        f"filler-{start // layers_per_material}",
                        "SrTiO3",
                        "{}",
                        now,
                    ),
                )
                db.executemany(
                    _INSERT_LAYER,
                    [
                        (
                            None,
                            organisation,
                            cursor.lastrowid,
                            position,
                            "SrTiO3",
                            '{"Sr":1,"Ti":1,"O":3}',
                            "001",
                            "Pm-3m",
                            "mp-5229",
                        )
                        for position in range(1, count + 1)
                    ],
                )
                start += count

    def fill_physical_samples(
        self, organisation: str, count: int, *, linked_every: int = 2
    ) -> None:
        """Add `count` physical samples to an organisation, as a large shared account has.

        Makes physical samples named `filler-run-N` (N counting on from the number the
        organisation has), every fourth one on a growth instrument, in one transaction:
        50,000 take a second or two. Every `linked_every`-th one is linked to a target
        material of its own, made here (`filler-target-N` on SrTiO3, without layers, so
        the target-material listing does not grow), so that the listing nests
        `target_material` objects as real data does.

        Args:
            organisation: Whose records.
            count: How many physical samples to add.
            linked_every: Link one physical sample in this many; 0 links none.

        Raises:
            ValueError: `count` or `linked_every` is negative.
            sqlite3.IntegrityError: A `filler-run-N` name is taken already (trimmed,
                ignoring case); nothing is stored.
        """
        if count < 0 or linked_every < 0:
            raise ValueError("count and linked_every must be >= 0")
        user_id, now = organisation_user_id(organisation), _now()
        with self._transaction(user_id) as db:
            (start,) = db.execute(
                "SELECT count(*) FROM physical_samples WHERE organisation = ?", (organisation,)
            ).fetchone()
            rows = []
            for number in range(start, start + count):
                sample_id = None
                if linked_every and (number - start) % linked_every == 0:
                    cursor = db.execute(
                        "INSERT INTO target_materials (organisation, user_id, sample_name,"
                        " substrate, sample_metadata, version, last_updated)"
                        " VALUES (?, ?, ?, 'SrTiO3', '{}', 1, ?)",
                        (organisation, user_id, f"filler-target-{number}", now),
                    )
                    sample_id = cursor.lastrowid
                name = f"filler-run-{number}"
                rows.append(
                    (
                        str(uuid.uuid4()),
                        organisation,
                        user_id,
                        organisation,
                        name,
                        physical_sample_name_key(name),
                        now,
                        now,
                        1 + number % 3 if number % 4 == 0 else None,
                        sample_id,
                    )
                )
            db.executemany(
                "INSERT INTO physical_samples (id, organisation, user_id, owner_name, name,"
                " name_key, created_datetime, last_updated, version, growth_instrument_id,"
                " sample_id, detail_notes_id, physical_sample_metadata)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, NULL, NULL)",
                rows,
            )

    # --- direct reads, for tests' assertions -------------------------------------------

    def layer_rows(
        self, *, organisation: str | None = None, sample_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored layers, attached or not, with their organisation, in `id` order.

        Args:
            organisation: Only this organisation's layers; all if `None`.
            sample_id: Only this target material's layers; all if `None`.

        Returns:
            One dict per stored row, duplicates included.
        """
        conditions, parameters = _filters(organisation=organisation, sample_id=sample_id)
        query = f"{_SELECT_LAYER_ROWS}{conditions} ORDER BY id"
        with self._lock:
            rows = self._db.execute(query, parameters).fetchall()
        return [_layer_reply(row) for row in rows]

    def count_layers(
        self,
        *,
        organisation: str | None = None,
        sample_id: int | None = None,
        layer_id: int | None = None,
    ) -> int:
        """How many layer rows are stored, duplicates included.

        Args:
            organisation: Only this organisation's; all if `None`.
            sample_id: Only this target material's; all if `None`.
            layer_id: Only at this position; all if `None`.

        Returns:
            The number of rows.
        """
        conditions, parameters = _filters(
            organisation=organisation, sample_id=sample_id, layer_id=layer_id
        )
        query = f"SELECT count(*) FROM layers{conditions}"  # noqa: S608
        with self._lock:
            row = self._db.execute(query, parameters).fetchone()
        return int(row[0])

    def target_materials(self, *, organisation: str | None = None) -> list[dict[str, Any]]:
        """Stored target materials with their organisation, in `sample_id` order.

        Args:
            organisation: Only this organisation's; all if `None`.

        Returns:
            One dict per target material, as the API shows it plus `organisation`.
        """
        conditions, parameters = _filters(organisation=organisation)
        query = f"{_SELECT_MATERIAL_ROWS}{conditions} ORDER BY sample_id"
        with self._lock:
            rows = self._db.execute(query, parameters).fetchall()
        return [_material_reply(row) for row in rows]

    def physical_samples(self, *, organisation: str | None = None) -> list[dict[str, Any]]:
        """Stored physical samples with their organisation, oldest first.

        Args:
            organisation: Only this organisation's; all if `None`.

        Returns:
            One dict per physical sample, as create answers it plus `organisation`.
        """
        conditions, parameters = _filters(organisation=organisation)
        query = f"{_SELECT_PHYSICAL_SAMPLE_ROWS}{conditions} ORDER BY seq"
        with self._lock:
            rows = self._db.execute(query, parameters).fetchall()
        return [_physical_sample_reply(row) for row in rows]

    def history(
        self,
        *,
        after: int = 0,
        organisation: str | None = None,
        sample_id: int | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """The audit: every insert, update and delete of a stored record, in order.

        The records are layers, target materials and physical samples.

        Args:
            after: Only entries with a `seq` above this (the last one a caller has seen).
            organisation: Only this organisation's; all if `None`.
            sample_id: Only entries whose `sample_id` is this target material's: the
                material's own, its layers' and those of the physical samples linked to
                it by the change; all if `None`.
            kind: Only entries of this kind (`layer`, `material` or
                `physical_sample`); all if `None`.

        Returns:
            One dict per change, oldest first: `seq` (its order), `at` (the server's
            `time.monotonic()` when it was written), `txn` (entries of one store call
            share it), `organisation`, `user_id` (the writer's), `action` (`insert`,
            `update` or `delete`), `kind` (`layer`, `material` or `physical_sample`),
            `record_id` (the layer's `id` or the material's `sample_id`, integers; a
            physical sample's `id`, its UUID text), `sample_id` (the target material;
            for a physical sample, the one it is linked to after the change, or `None`),
            `layer_id` (layers only), `row` (the record after the change; before it,
            for a delete; a physical sample's `version` is the bare counter), `fault`
            (the fault injected into the request, if any) and `gave_up_at` (when the
            client gave up on a write committed after that, else `None`).
        """
        conditions, parameters = _filters(organisation=organisation, sample_id=sample_id, kind=kind)
        conditions = f"{conditions} AND seq > ?" if conditions else " WHERE seq > ?"
        query = f"{_SELECT_AUDIT}{conditions} ORDER BY seq"
        with self._lock:
            rows = self._db.execute(query, (*parameters, after)).fetchall()
        entries = []
        for row in rows:
            entry = dict(row)
            entry["row"] = json.loads(entry["row"])
            entries.append(entry)
        return entries

    def last_history_seq(self) -> int:
        """The `seq` of the newest audit entry, 0 if none: pass it as `history(after=...)`."""
        with self._lock:
            row = self._db.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()
        return int(row[0])

    # --- helpers, called with the lock held --------------------------------------------

    def _require_material(self, db: sqlite3.Connection, organisation: str, sample_id: int) -> None:
        found = db.execute(
            "SELECT 1 FROM target_materials WHERE organisation = ? AND sample_id = ?",
            (organisation, sample_id),
        ).fetchone()
        if found is None:
            raise SampleNotFoundError(sample_id)

    def _require_physical_sample(
        self, db: sqlite3.Connection, organisation: str, physical_sample_id: str
    ) -> None:
        found = db.execute(
            "SELECT 1 FROM physical_samples WHERE organisation = ? AND id = ?",
            (organisation, physical_sample_id),
        ).fetchone()
        if found is None:
            raise PhysicalSampleNotFoundError(physical_sample_id)

    def _require_free_name(
        self, db: sqlite3.Connection, organisation: str, name: str, renamed: str | None
    ) -> None:
        """Raise if a sample other than `renamed` has `name`, trimmed and ignoring case."""
        taken = db.execute(
            "SELECT id FROM physical_samples WHERE organisation = ? AND name_key = ?",
            (organisation, physical_sample_name_key(name)),
        ).fetchone()
        if taken is not None and taken["id"] != renamed:
            raise PhysicalSampleNameTakenError(taken["id"], name)

    def _physical_sample(
        self, db: sqlite3.Connection, organisation: str, physical_sample_id: str
    ) -> dict[str, Any]:
        row = db.execute(_SELECT_PHYSICAL_SAMPLE, (organisation, physical_sample_id)).fetchone()
        return _physical_sample_reply(row)

    def _material(
        self, db: sqlite3.Connection, organisation: str, sample_id: int
    ) -> dict[str, Any]:
        query = f"{_SELECT_MATERIAL} WHERE organisation = ? AND sample_id = ?"
        row = db.execute(query, (organisation, sample_id)).fetchone()
        return _material_reply(row)

    def _insert_layer(
        self,
        db: sqlite3.Connection,
        organisation: str,
        layer: LayerValues,
        sample_id: int | None,
    ) -> dict[str, Any]:
        if layer.id is not None:
            taken = db.execute("SELECT 1 FROM layers WHERE id = ?", (layer.id,)).fetchone()
            if taken is not None:
                raise LayerIdTakenError(layer.id)
        element_dict = None if layer.element_dict is None else dict(layer.element_dict)
        cursor = db.execute(
            _INSERT_LAYER,
            (
                layer.id,
                organisation,
                sample_id,
                layer.layer_id,
                layer.composition_string,
                _dump(element_dict),
                layer.orientation,
                layer.space_group,
                layer.mp_id,
            ),
        )
        return {
            "id": cursor.lastrowid,
            "layer_id": layer.layer_id,
            "sample_id": sample_id,
            "composition_string": layer.composition_string,
            "element_dict": element_dict,
            "orientation": layer.orientation,
            "space_group": layer.space_group,
            "mp_id": layer.mp_id,
        }


def _filters(**equal_to: int | str | None) -> tuple[str, tuple[int | str, ...]]:
    """A WHERE clause requiring each non-None column to equal its value."""
    used = {column: value for column, value in equal_to.items() if value is not None}
    if not used:
        return "", ()
    return " WHERE " + " AND ".join(f"{column} = ?" for column in used), tuple(used.values())


def _close_and_remove(db: sqlite3.Connection, temporary_dir: str | None) -> None:
    db.close()
    if temporary_dir is not None:
        shutil.rmtree(temporary_dir, ignore_errors=True)
