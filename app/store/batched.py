"""The group committer's writes: many rows per table handed to the driver's ``executemany``
through statements compiled once."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.store.engine import hold_events_lock
from app.store.schema import events, jobs, notifications


class _Batched:
    """An INSERT or UPDATE of one table that a batch runs with many rows, compiled once per
    dialect and set of columns and handed to the driver's ``executemany`` as it is
    (``exec_driver_sql``). SQLAlchemy still owns the connection, the transaction and the
    wrapping of errors; what is skipped is its per-execution work (compiled-cache lookup,
    building every row's parameters anew), a large share of the group committer's time. Values
    go through each column type's own bind processor, so the rows written are the ones
    ``conn.execute(statement, rows)`` would write (``tests/test_store_batched.py`` compares
    them).
    """

    def __init__(self, table: sa.Table, *, where_id: str | None = None) -> None:
        self.table = table
        #: for an UPDATE: the parameter that names the row (``WHERE id = :where_id``)
        self.where_id = where_id
        self._compiled: dict[tuple[str, frozenset[str]], tuple[str, list[tuple[str, Any]]]] = {}

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Run the statement once per row: one ``executemany`` per set of keys."""
        by_keys: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in rows:
            by_keys.setdefault(frozenset(row), []).append(row)
        positional = conn.dialect.paramstyle in ("qmark", "numeric", "format")
        for keys, group in by_keys.items():
            sql, params = self._compile(conn.dialect, keys)
            if positional:
                driver_rows: list[Any] = [
                    tuple(process(row[key]) if process else row[key] for key, process in params)
                    for row in group
                ]
            else:
                driver_rows = [
                    {key: process(row[key]) if process else row[key] for key, process in params}
                    for row in group
                ]
            conn.exec_driver_sql(sql, driver_rows)

    def _compile(
        self, dialect: sa.Dialect, keys: frozenset[str]
    ) -> tuple[str, list[tuple[str, Any]]]:
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            columns = sorted(keys - {self.where_id})
            statement: sa.Insert | sa.Update
            if self.where_id is None:
                statement = sa.insert(self.table).inline()  # no RETURNING of the new ids
            else:
                statement = sa.update(self.table).where(
                    self.table.c.id == sa.bindparam(self.where_id)
                )
            compiled = statement.values({c: sa.bindparam(c) for c in columns}).compile(
                dialect=dialect
            )
            order = compiled.positiontup or list(compiled.binds)
            types = {c: self.table.c[c].type for c in columns}
            params = [
                (key, types[key].dialect_impl(dialect).bind_processor(dialect))
                if key in types
                else (key, None)
                for key in order
            ]
            found = self._compiled[(dialect.name, keys)] = (compiled.string, params)
        return found


_INSERT_JOBS = _Batched(jobs)
_UPDATE_JOBS = _Batched(jobs, where_id="job_id_")
_INSERT_NOTIFICATIONS = _Batched(notifications)
_INSERT_EVENTS = _Batched(events)


def insert_jobs(conn: Connection, rows: list[dict[str, Any]]) -> None:
    _INSERT_JOBS.run(conn, rows)


def update_jobs(conn: Connection, changes: list[tuple[str, dict[str, Any]]]) -> None:
    """Write each job's changed columns, ``(job id, {column: value})``. Jobs that change the
    same columns share one statement. Only what changed is set: SQLite rewrites the index of
    every column an UPDATE sets, whether or not its value is new."""
    _UPDATE_JOBS.run(conn, [{**values, "job_id_": job_id} for job_id, values in changes])


def insert_notifications(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Record notifications; a repeated (job, digest) violates the unique key: the caller
    has deduplicated already, so that only happens in a race the caller then retries."""
    _INSERT_NOTIFICATIONS.run(conn, rows)


def insert_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        hold_events_lock(conn)
        _INSERT_EVENTS.run(conn, rows)
