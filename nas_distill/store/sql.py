"""Several writes of one trial in one SQL transaction, stored exactly as Optuna stores them.

Optuna commits each ``set_trial_user_attr`` on its own; a trial records ~10 attrs, and on SQLite a
commit is the dominant cost of a cheap trial. These helpers write inside a session the caller commits.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Mapping, Sequence

from sqlalchemy.dialects import postgresql, sqlite

from .optuna_internals import models, set_trial_attr_without_commit

__all__ = ["jsonable", "write_user_attrs", "write_values"]


def jsonable(value: Any) -> Any:
    """Round-trip through JSON (tuples -> lists, unknown objects -> repr) so Optuna can store it."""
    return json.loads(json.dumps(value, default=repr))


def _upsert_insert(dialect: str):
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        return sqlite.insert
    return None


def write_user_attrs(rdb, session, trial_id: int, values: Mapping[str, Any], check: bool = True) -> None:
    """Upsert JSON-safe user attrs of one trial inside ``session`` (the caller commits). ``check=False``:
    the caller has just finished the trial in this same transaction (the attrs go with the finish).

    On SQLite and PostgreSQL: one check that the trial may still be updated (as Optuna does before each
    attr) and one upsert statement for all the attrs, stored as Optuna stores them (``json.dumps`` in
    ``trial_user_attributes``), instead of a lookup + a statement per attr. Elsewhere Optuna's own
    per-attr statement.
    """
    if not values:
        return
    insert = _upsert_insert(rdb.engine.name)
    if insert is None and check:
        for key, value in values.items():
            set_trial_attr_without_commit(rdb, session, models.TrialUserAttributeModel, trial_id, key, value)
        return
    if insert is None:  # another dialect, the trial just finished: Optuna's setter would refuse it
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        for key, value in values.items():
            row = models.TrialUserAttributeModel.find_by_trial_and_key(trial, key, session)
            if row is None:
                session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
        return
    if check:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        rdb.check_trial_is_updatable(trial_id, trial.state)
    table = models.TrialUserAttributeModel.__table__
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.trial_id, table.c.key],
                                      set_={"value_json": stmt.excluded.value_json})
    session.execute(stmt, [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                           for key, value in values.items()])


def write_values(session, trial, values: Sequence[float]) -> None:
    """The objective values of a trial row, as Optuna stores them."""
    for objective, value in enumerate(values):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        row = models.TrialValueModel.find_by_trial_and_objective(trial, objective, session)
        if row is None:
            session.add(models.TrialValueModel(trial_id=trial.trial_id, objective=objective, value=stored,
                                               value_type=kind))
        else:
            row.value, row.value_type = stored, kind
