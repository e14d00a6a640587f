"""Tables and queries (SQLAlchemy Core): the only module that builds SQL.

Works unchanged on SQLite (the embedded default, WAL, ``synchronous=FULL`` so a commit is on
disk before we answer) and on PostgreSQL (psycopg 3). Functions take an open connection inside
a transaction the caller owns; they return models from :mod:`app.models`, never rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.models import (
    Claim,
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Event,
    Figures,
    Job,
    NotificationRecord,
    QuarantinedNotification,
    Subscription,
    TypeFilter,
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which keeps no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("ci_job_id", sa.String(64), unique=True),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("tag", sa.String(32), nullable=False),
    sa.Column("queue_id", sa.String(64)),
    sa.Column("code", sa.String(128)),
    sa.Column("message", sa.Text),
    sa.Column("user_data", sa.Text),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("ci_created_at", UTCDateTime),
    sa.Column("ci_started_at", UTCDateTime),
    sa.Column("ci_ended_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("last_notified_at", UTCDateTime),
    # submission (jobs cirelay sent to CI): the CI request as sent, the client's
    # Idempotency-Key with a digest of what it asked for, and CI's error if it refused
    sa.Column("request", sa.JSON),
    sa.Column("idempotency_key", sa.String(255), unique=True),
    sa.Column("request_digest", sa.String(64)),
    sa.Column("submit_error", sa.JSON),
    # reconciliation: when CI was last asked about this job
    sa.Column("last_polled_at", UTCDateTime),
    sa.Index(None, "state", "id"),
    sa.Index(None, "created_at"),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("ci_job_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("wire_format", sa.String(8), nullable=False),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("job_id", "digest"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("type", sa.String(80), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(64)),
    sa.Column("job_id", sa.String(40)),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index(None, "job_id", "seq"),
)

quarantined_notifications = sa.Table(
    "quarantined_notifications",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(40)),
    sa.Column("content_type", sa.String(128), nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("error", sa.String(64), nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("replayed_at", UTCDateTime),
    sa.Column("replay_outcome", sa.String(32)),
)


subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("previous_secret", sa.String(128)),
    sa.Column("previous_secret_expires_at", UTCDateTime),
    sa.Column("disabled_reason", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("fanout_seq", BigId, nullable=False, server_default="0"),
    sa.Column("failing_since", UTCDateTime),
    sa.Column("last_failure_at", UTCDateTime),
    sa.Column("successes_in_a_row", sa.Integer, nullable=False, server_default="0"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "subscription_id",
        sa.String(40),
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("event_seq", BigId, sa.ForeignKey("events.seq"), nullable=False),
    # one job's deliveries to one subscription go out in event order
    sa.Column("order_key", sa.String(40)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    # a claimed delivery belongs to one worker until its lease ends (a dead worker's lapses)
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("origin", sa.String(40), nullable=False),  # "fanout", or a replay's id (rpl_…)
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Index(None, "state", "next_attempt_at"),
    sa.Index(None, "subscription_id", "order_key", "event_seq"),
    sa.Index(None, "origin"),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        BigId,
        sa.ForeignKey("deliveries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("result", sa.String(24), nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
)


# --- engine -------------------------------------------------------------------------------


def create_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine with the settings each backend needs.

    SQLite: WAL, ``synchronous=FULL`` (durable at commit), foreign keys on, a busy timeout as
    a last resort, and ``BEGIN IMMEDIATE`` for writing transactions so one takes the write
    lock up front rather than failing to upgrade a read lock half-way. Writers also queue on
    a file lock next to the database (see :func:`transaction`). Readers use plain ``BEGIN``.
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **_JSON)
        database = engine.url.database
        if database and database != ":memory:":
            _WRITER_LOCKS[engine] = WriterLock(f"{database}.writer-lock")

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                "foreign_keys=ON",
                "busy_timeout=30000",
            ):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            writer = conn.get_execution_options().get("cirelay_writer", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,  # a connection the server dropped is replaced, not used
        pool_timeout=10,  # a request waits this long for a connection, then 503
        pool_recycle=1800,
        # a database that does not answer fails in seconds (readiness, 503), not minutes
        connect_args={"connect_timeout": 5, "application_name": "cirelay"},
        **_JSON,
    )


#: what orjson leaves to ``json_dumps``'s fallback (the standard library raises for them)
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def json_dumps(value: Any) -> str:
    """JSON columns' text: orjson, about five times quicker than the standard library (the
    group committer encodes a job's detail, its event and the headers of every notification).
    What orjson refuses and the standard library takes (keys that are not strings, integers
    over 64 bits) goes to the standard library, as does what both refuse (datetimes,
    dataclasses), which raises as before."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
    except TypeError:
        return json.dumps(value)


def json_loads(text: str | bytes) -> Any:
    """JSON columns' values; text orjson refuses (``NaN``, which older rows may hold) is
    read by the standard library."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


_JSON: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": json_loads}

#: PostgreSQL SQLSTATEs worth one more try: serialization failure, deadlock
_RETRY_SQLSTATES = ("40001", "40P01")


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot serve us now — unreachable, dropped the connection, out of
    resources (PostgreSQL classes 08, 53, 57P), or any SQLite operational error (locked past
    the busy timeout, disk full): not the request's fault, worth retrying later (503)."""
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        code = getattr(exc.orig, "sqlstate", None) or ""
        return not code or code.startswith(("08", "53", "57P"))
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether running the same transaction again may well succeed at once: a serialization
    failure or deadlock, a connection dropped in the middle (the pool hands out a fresh one),
    SQLite locked. Not a database that cannot be reached at all or a pool with no connection
    free: those waited their timeout already, and waiting it twice more helps nobody."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.OperationalError):
        code = getattr(exc.orig, "sqlstate", None) or ""
        return code.startswith(_RETRY_SQLSTATES) or "database is locked" in str(exc.orig)
    return False


class WriterLock:
    """One SQLite writer at a time across threads and processes, without polling.

    SQLite lets one writer in and makes the others retry on a busy handler that sleeps
    1, 2, 5 … 100 ms between tries: under load that adds tens of milliseconds to a write.
    An exclusive ``flock`` on a file next to the database queues writers in the kernel
    instead and wakes the next one the moment the lock is free.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._pid != os.getpid():  # a forked worker needs its own open file
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


_WRITER_LOCKS: weakref.WeakKeyDictionary[Engine, WriterLock] = weakref.WeakKeyDictionary()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One writing transaction on a connection of its own: committed when the block ends,
    rolled back if it raises."""
    held = HeldConnection(engine)
    try:
        with held.transaction() as conn:
            yield conn
    finally:
        held.close()


class HeldConnection:
    """One thread's writing transactions on a connection it keeps between them (the group
    committer's, while batches follow each other): no pool checkout and, on PostgreSQL, no
    pre-ping round trip per transaction. The thread gives it back with :meth:`close` when it
    goes idle; after any error it is dropped, so a connection the server closed is replaced
    at once (the committer's retry runs on a new one, pinged by the pool).

    Not thread-safe: one per thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One writing transaction: committed when the block ends, rolled back if it raises.
        On SQLite it first queues for the writer lock (see :class:`WriterLock`)."""
        with _WRITER_LOCKS.get(self.engine) or contextlib.nullcontext():
            if self._conn is None:
                self._conn = self.engine.connect()
                self._conn.execution_options(cirelay_writer=True)
            try:
                with self._conn.begin():
                    yield self._conn
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Give the connection back to the pool (a broken one is discarded there)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # it may be broken: that is why it goes
                conn.close()


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    detail = m["detail"] or {}
    return Job(
        id=m["id"],
        ci_job_id=m["ci_job_id"],
        origin=m["origin"],
        state=m["state"],
        tag=m["tag"],
        queue_id=m["queue_id"],
        code=m["code"],
        message=m["message"],
        user_data=m["user_data"],
        input=detail.get("input", {}),
        output=detail.get("output", {}),
        result_files=detail.get("result_files", []),
        media_info=detail.get("media_info", {}),
        workflow=detail.get("workflow"),
        template=detail.get("template"),
        ci_created_at=m["ci_created_at"],
        ci_started_at=m["ci_started_at"],
        ci_ended_at=m["ci_ended_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_notified_at=m["last_notified_at"],
        request=m["request"],
        idempotency_key=m["idempotency_key"],
        request_digest=m["request_digest"],
        submit_error=m["submit_error"],
    )


# Hot-path statements are built once and executed with a parameter dict, so SQLAlchemy
# compiles each once per dialect instead of once per notification.
_SELECT_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("ident"))
_FIND_JOB = sa.select(jobs).where(
    sa.or_(jobs.c.id == sa.bindparam("ident"), jobs.c.ci_job_id == sa.bindparam("ident"))
)
_LOCKED = {q: q.with_for_update() for q in (_SELECT_JOB, _FIND_JOB)}
_UPDATE_JOB = sa.update(jobs).where(jobs.c.id == sa.bindparam("job_id_"))


def _select(conn: Connection, query: sa.Select[Any], ident: str, for_update: bool) -> Job | None:
    # SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL locks the row.
    if for_update and conn.dialect.name == "postgresql":
        query = _LOCKED[query]
    row = conn.execute(query, {"ident": ident}).first()
    return _job(row) if row else None


def get_job(conn: Connection, job_id: str, *, for_update: bool = False) -> Job | None:
    return _select(conn, _SELECT_JOB, job_id, for_update)


def find_job(conn: Connection, ident: str, *, for_update: bool = False) -> Job | None:
    """A job by cirelay id or CI JobId."""
    return _select(conn, _FIND_JOB, ident, for_update)


def find_job_by_idempotency_key(conn: Connection, key: str) -> Job | None:
    row = conn.execute(sa.select(jobs).where(jobs.c.idempotency_key == key)).first()
    return _job(row) if row else None


def insert_job(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(sa.insert(jobs), values)


def update_job(conn: Connection, job_id: str, values: dict[str, Any]) -> None:
    conn.execute(_UPDATE_JOB, {**values, "job_id_": job_id})


#: the columns a notification can change (not the submission's, not the creation's)
NOTIFIED_COLUMNS = frozenset(
    {"ci_job_id", "state", "tag", "queue_id", "code", "message", "user_data", "detail",
     "ci_created_at", "ci_started_at", "ci_ended_at", "updated_at", "last_notified_at"}
)  # fmt: skip


def job_values(job: Job, *, only: frozenset[str] | None = None) -> dict[str, Any]:
    """The columns of ``job`` (the inverse of reading a row), or only those named."""
    values = {
        "id": job.id,
        "ci_job_id": job.ci_job_id,
        "origin": job.origin,
        "state": job.state,
        "tag": job.tag,
        "queue_id": job.queue_id,
        "code": job.code,
        "message": job.message,
        "user_data": job.user_data,
        "detail": {
            "input": job.input,
            "output": job.output,
            "result_files": job.result_files,
            "media_info": job.media_info,
            "workflow": job.workflow,
            "template": job.template,
        },
        "ci_created_at": job.ci_created_at,
        "ci_started_at": job.ci_started_at,
        "ci_ended_at": job.ci_ended_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "last_notified_at": job.last_notified_at,
        "request": job.request,
        "idempotency_key": job.idempotency_key,
        "request_digest": job.request_digest,
        "submit_error": job.submit_error,
    }
    return values if only is None else {k: v for k, v in values.items() if k in only}


#: every digest recorded for the job, comma-separated (digests are hex): read with the job
_DIGESTS_OF_JOB = (
    sa.select(sa.func.aggregate_strings(notifications.c.digest, ","))
    .where(notifications.c.job_id == jobs.c.id)
    .scalar_subquery()
)
_LOCK_JOBS = (
    sa.select(jobs, _DIGESTS_OF_JOB.label("digests"))
    .where(
        sa.or_(
            jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
            jobs.c.ci_job_id.in_(sa.bindparam("ci_ids", expanding=True)),
        )
    )
    .order_by(jobs.c.id)
)
_LOCK_JOBS_FOR_UPDATE = _LOCK_JOBS.with_for_update(of=jobs)


def lock_jobs(
    conn: Connection, *, ids: Iterable[str], ci_job_ids: Iterable[str]
) -> list[tuple[Job, set[str]]]:
    """The jobs with these ids or CI JobIds, each with the digests of every notification
    recorded for it (one statement); on PostgreSQL locked for the transaction, in id order so
    that concurrent batches cannot deadlock (SQLite's writer lock serialises)."""
    query = _LOCK_JOBS_FOR_UPDATE if conn.dialect.name == "postgresql" else _LOCK_JOBS
    rows = conn.execute(query, {"ids": sorted(ids), "ci_ids": sorted(ci_job_ids)})
    return [(_job(row), set(row.digests.split(",")) if row.digests else set()) for row in rows]


@contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, the statements run in the block go to the server together and their
    results come back together (psycopg's pipeline mode): one round trip for the batch's
    writes instead of one per statement. Statements whose results are read inside the block
    wait for them; an error of any statement is raised at the end of the block at the latest,
    as SQLAlchemy's exception (so callers tell a conflict from a lost connection as usual).
    Elsewhere it does nothing."""
    if conn.dialect.name != "postgresql":
        yield
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    dbapi: Any = conn.dialect.loaded_dbapi
    try:
        with driver.pipeline():
            yield
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        raise sa.exc.DBAPIError.instance(
            None, None, exc, dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc


class _Batched:
    """An INSERT or UPDATE of one table that a batch runs with many rows, compiled once per
    dialect and set of columns and handed to the driver's ``executemany`` as it is
    (``exec_driver_sql``). SQLAlchemy still owns the connection, the transaction and the
    wrapping of errors; what is skipped is its per-execution work (compiled-cache lookup,
    building every row's parameters anew), a third of the group committer's time. Values go
    through each column type's own bind processor, so the rows written are the ones
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


#: the PostgreSQL channel that says "new events are committed" (see :class:`EventWaker`)
EVENTS_CHANNEL = "cirelay_events"


class EventWaker:
    """Wakes whoever waits for new events the moment they are committed: PostgreSQL's
    LISTEN/NOTIFY on one connection per process. On SQLite (or while the listening connection
    is down) :meth:`wait` simply times out, and callers poll as before.

    The listening thread starts on first use, so it is made in the process that uses it (a
    gunicorn worker, after the fork)."""

    def __init__(self, url: str) -> None:
        self.url = url if url.startswith("postgresql") else None
        self._cond = threading.Condition()
        self._generation = 0
        self._pid = 0
        self._callbacks: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        return self.url is not None

    def wait(self, timeout: float) -> bool:
        """Until events are committed (True) or ``timeout`` seconds pass (False)."""
        self._ensure_thread()
        with self._cond:
            seen = self._generation
            return self._cond.wait_for(lambda: self._generation != seen, timeout)

    def on_events(self, callback: Callable[[], None]) -> None:
        """Also call ``callback`` (from the listening thread) whenever events are committed."""
        self._callbacks.append(callback)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self.url is None or self._pid == os.getpid():
            return
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._listen, name="event-waker", daemon=True).start()

    def _listen(self) -> None:
        import psycopg

        assert self.url is not None
        url = self.url.replace("postgresql+psycopg://", "postgresql://")
        while True:
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self._wake()  # anything committed while not listening is seen now
                    for _ in conn.notifies():
                        self._wake()
            except Exception:  # the database went away: wait() times out meanwhile
                time.sleep(1.0)

    def _wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        for callback in self._callbacks:
            callback()


#: any constant: the advisory lock that orders event writers on PostgreSQL
_EVENTS_LOCK = 0x636972656C6179  # "cirelay"


def hold_events_lock(conn: Connection) -> None:
    """Hold, until this transaction ends, the lock that orders the writers of events, so they
    become visible in sequence order and a reader resuming "after N" never skips one.

    A PostgreSQL sequence hands out numbers at INSERT, but transactions commit in any order:
    seq 8 could become visible before seq 7, and a cursor at 8 would never see 7. Holding a
    transaction-level advisory lock from before the first event insert to the commit makes
    commit order equal sequence order. SQLite has one writer at a time already.

    Lock order: this lock first, then job rows. The group committer takes it as each batch
    begins (its batch grows while it waits); a transaction that locks a job and may then
    write an event takes it before the job. The same statement tells the listeners of
    :data:`EVENTS_CHANNEL` (delivered at commit, only if the transaction commits). Taken once
    per transaction however often it is called.
    """
    if conn.dialect.name != "postgresql":
        return
    transaction = conn.get_transaction()
    if conn.info.get(_HOLDS_EVENTS_LOCK) is not transaction:
        conn.execute(_LOCK_AND_NOTIFY, {"key": _EVENTS_LOCK})
        conn.info[_HOLDS_EVENTS_LOCK] = transaction


#: the transaction of this connection that holds the events lock (``Connection.info`` lasts
#: as long as the connection, a transaction only until it ends)
_HOLDS_EVENTS_LOCK = "cirelay_holds_events_lock"

_LOCK_AND_NOTIFY = sa.text(f"SELECT pg_advisory_xact_lock(:key), pg_notify('{EVENTS_CHANNEL}', '')")


def list_jobs(
    conn: Connection,
    *,
    states: Sequence[str] = (),
    tag: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    before_id: str | None = None,
    limit: int = 50,
) -> list[Job]:
    """Newest first; ``before_id`` is the cursor (ids sort by creation time)."""
    query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if states:
        query = query.where(jobs.c.state.in_(list(states)))
    if tag:
        query = query.where(jobs.c.tag == tag)
    if created_after:
        query = query.where(jobs.c.created_at >= created_after)
    if created_before:
        query = query.where(jobs.c.created_at < created_before)
    if before_id:
        query = query.where(jobs.c.id < before_id)
    return [_job(row) for row in conn.execute(query)]


def list_silent_jobs(conn: Connection, *, silent_since: datetime, limit: int) -> list[Job]:
    """Jobs CI has not told us about since ``silent_since`` and we have not asked about since
    then either: not finished, with a CI JobId to ask with; the most overdue first."""
    heard = sa.func.coalesce(jobs.c.last_notified_at, jobs.c.updated_at)
    asked = sa.func.coalesce(jobs.c.last_polled_at, heard)
    query = (
        sa.select(jobs)
        .where(
            jobs.c.ci_job_id.is_not(None),
            jobs.c.state.not_in(["Success", "Failed", "Cancel"]),
            heard < silent_since,
            asked < silent_since,
        )
        .order_by(asked)
        .limit(limit)
    )
    return [_job(row) for row in conn.execute(query)]


def list_unbound_jobs(conn: Connection, *, created_before: datetime, limit: int) -> list[Job]:
    """Jobs whose submission got no answer from CI (no JobId), older than ``created_before``
    and not looked for since then."""
    asked = sa.func.coalesce(jobs.c.last_polled_at, jobs.c.created_at)
    query = (
        sa.select(jobs)
        .where(
            jobs.c.ci_job_id.is_(None),
            jobs.c.state == "Submitting",
            jobs.c.origin == "api",
            jobs.c.created_at < created_before,
            asked < created_before,
        )
        .order_by(asked)
        .limit(limit)
    )
    return [_job(row) for row in conn.execute(query)]


def mark_polled(conn: Connection, job_ids: Sequence[str], at: datetime) -> None:
    conn.execute(sa.update(jobs).where(jobs.c.id.in_(list(job_ids))).values(last_polled_at=at))


def list_notifications(conn: Connection, job_id: str) -> list[NotificationRecord]:
    cols = [c for c in notifications.c if c.name not in ("body", "headers", "content_type")]
    query = sa.select(*cols).where(notifications.c.job_id == job_id).order_by(notifications.c.id)
    return [
        NotificationRecord(
            id=m["id"],
            job_id=m["job_id"],
            state=m["state"],
            source=m["source"],
            outcome=m["outcome"],
            wire_format=m["wire_format"],
            digest=m["digest"],
            received_at=m["received_at"],
        )
        for m in conn.execute(query).mappings()
    ]


# --- events (the outbox) ------------------------------------------------------------------


def insert_event(conn: Connection, values: dict[str, Any]) -> None:
    insert_events(conn, [values])


def list_events(
    conn: Connection,
    *,
    after: int = 0,
    limit: int = 100,
    types: Sequence[str] = (),
    type_prefixes: Sequence[str] = (),
) -> list[Event]:
    """Events after sequence number ``after``, oldest first; when ``types`` or
    ``type_prefixes`` are given, only events of one of those types or prefixes."""
    query = sa.select(events).where(events.c.seq > after).order_by(events.c.seq).limit(limit)
    query = query.where(_of_types(TypeFilter(tuple(types), tuple(type_prefixes))))
    return [Event(**dict(m)) for m in conn.execute(query).mappings()]


def _of_types(wanted: TypeFilter) -> sa.ColumnElement[bool]:
    if wanted.everything:
        return sa.true()
    return sa.or_(
        events.c.type.in_(list(wanted.types)),
        *(events.c.type.startswith(p, autoescape=True) for p in wanted.prefixes),
    )


def events_head(conn: Connection) -> int:
    """The sequence number of the newest event (0 when there is none)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0))).scalar_one())


def find_event(conn: Connection, event_id: str) -> Event | None:
    row = conn.execute(sa.select(events).where(events.c.id == event_id)).mappings().first()
    return Event(**dict(row)) if row else None


# --- quarantine ---------------------------------------------------------------------------


def _quarantined(m: sa.RowMapping) -> QuarantinedNotification:
    return QuarantinedNotification(**dict(m))


def insert_quarantined(conn: Connection, item: QuarantinedNotification) -> QuarantinedNotification:
    """Store ``item`` (its ``id`` is ignored); returns it with the id it was given."""
    values = {k: v for k, v in dataclasses.asdict(item).items() if k != "id"}
    result = conn.execute(
        sa.insert(quarantined_notifications)
        .values(**values)
        .returning(quarantined_notifications.c.id)
    )
    return dataclasses.replace(item, id=int(result.scalar_one()))


def get_quarantined(conn: Connection, ident: int) -> QuarantinedNotification | None:
    query = sa.select(quarantined_notifications).where(quarantined_notifications.c.id == ident)
    row = conn.execute(query).mappings().first()
    return _quarantined(row) if row else None


def list_quarantined(
    conn: Connection, *, pending_only: bool = False, limit: int = 100
) -> list[QuarantinedNotification]:
    query = (
        sa.select(quarantined_notifications).order_by(quarantined_notifications.c.id).limit(limit)
    )
    if pending_only:
        query = query.where(quarantined_notifications.c.replayed_at.is_(None))
    return [_quarantined(m) for m in conn.execute(query).mappings()]


def mark_replayed(conn: Connection, ident: int, at: datetime, outcome: str) -> None:
    conn.execute(
        sa.update(quarantined_notifications)
        .where(quarantined_notifications.c.id == ident)
        .values(replayed_at=at, replay_outcome=outcome)
    )


def count_quarantined(conn: Connection) -> int:
    """Quarantined notifications not yet replayed successfully."""
    query = sa.select(sa.func.count()).where(
        sa.or_(
            quarantined_notifications.c.replayed_at.is_(None),
            quarantined_notifications.c.replay_outcome.in_(["schema_violation", "malformed"]),
        )
    )
    return int(conn.execute(query).scalar_one())


# --- subscriptions ------------------------------------------------------------------------


def insert_subscription(conn: Connection, item: Subscription) -> None:
    conn.execute(sa.insert(subscriptions).values(**dataclasses.asdict(item)))


def get_subscription(conn: Connection, ident: str) -> Subscription | None:
    row = conn.execute(sa.select(subscriptions).where(subscriptions.c.id == ident)).mappings()
    found = row.first()
    return Subscription(**dict(found)) if found else None


def list_subscriptions(conn: Connection) -> list[Subscription]:
    rows = conn.execute(sa.select(subscriptions).order_by(subscriptions.c.id)).mappings()
    return [Subscription(**dict(m)) for m in rows]


def update_subscription(conn: Connection, ident: str, values: dict[str, Any]) -> bool:
    query = sa.update(subscriptions).where(subscriptions.c.id == ident).values(**values)
    return bool(conn.execute(query).rowcount)


def delete_subscription(conn: Connection, ident: str) -> bool:
    query = sa.delete(subscriptions).where(subscriptions.c.id == ident)
    return bool(conn.execute(query).rowcount)


def any_behind(conn: Connection, head: int) -> bool:
    """Whether an enabled subscription's fan-out cursor is behind ``head`` (a cheap read)."""
    query = sa.select(subscriptions.c.id).where(
        subscriptions.c.enabled, subscriptions.c.fanout_seq < head
    )
    return conn.execute(query.limit(1)).first() is not None


def subscriptions_to_fan_out(conn: Connection, head: int) -> list[Subscription]:
    """Enabled subscriptions whose fan-out cursor is behind ``head``, locked for this
    transaction; on PostgreSQL, those another worker holds are skipped."""
    query = (
        sa.select(subscriptions)
        .where(subscriptions.c.enabled, subscriptions.c.fanout_seq < head)
        .order_by(subscriptions.c.id)
        .with_for_update(skip_locked=True)
    )
    return [Subscription(**dict(m)) for m in conn.execute(query).mappings()]


def fan_out(conn: Connection, subscription: Subscription, *, limit: int, now: datetime) -> int:
    """Create the deliveries of the next (at most ``limit``) events after the subscription's
    cursor that match its types, and move the cursor past them. Returns how many."""
    after = subscription.fanout_seq
    window = (
        sa.select(events.c.seq).where(events.c.seq > after).order_by(events.c.seq).limit(limit)
    ).subquery()
    last = conn.execute(sa.select(sa.func.max(window.c.seq))).scalar_one()
    if last is None:
        return 0
    created = _insert_deliveries(
        conn,
        subscription.id,
        sa.and_(
            events.c.seq > after,
            events.c.seq <= last,
            _of_types(TypeFilter.from_patterns(subscription.event_types)),
        ),
        origin="fanout",
        now=now,
    )
    conn.execute(
        sa.update(subscriptions)
        .where(subscriptions.c.id == subscription.id)
        .values(fanout_seq=int(last))
    )
    return created


def _insert_deliveries(
    conn: Connection, subscription_id: str, which: sa.ColumnElement[bool], *, origin: str,
    now: datetime,
) -> int:  # fmt: skip
    chosen = sa.select(
        sa.literal(subscription_id, sa.String(40)),
        events.c.seq,
        events.c.job_id,
        sa.literal(DeliveryState.PENDING.value, sa.String(16)),
        sa.literal(0, sa.Integer),
        sa.literal(now, UTCDateTime),
        sa.literal(origin, sa.String(40)),
        sa.literal(now, UTCDateTime),
    ).where(which)
    insert = sa.insert(deliveries).from_select(
        ["subscription_id", "event_seq", "order_key", "state", "attempts", "next_attempt_at",
         "origin", "created_at"],
        chosen,
    )  # fmt: skip
    return len(conn.execute(insert.returning(deliveries.c.id)).all())


def enqueue_replay(
    conn: Connection,
    subscription: Subscription,
    *,
    origin: str,
    now: datetime,
    event_seq: int | None = None,
    since: datetime | None = None,
) -> int:
    """New deliveries of one event (``event_seq``) or of every matching event since a time."""
    if event_seq is not None:
        which = events.c.seq == event_seq
    else:
        assert since is not None
        which = sa.and_(
            events.c.time >= since, _of_types(TypeFilter.from_patterns(subscription.event_types))
        )
    return _insert_deliveries(conn, subscription.id, which, origin=origin, now=now)


def progress(conn: Connection, origin: str) -> dict[str, int]:
    """How many deliveries of one origin (a replay) are in each state."""
    query = (
        sa.select(deliveries.c.state, sa.func.count())
        .where(deliveries.c.origin == origin)
        .group_by(deliveries.c.state)
    )
    return {str(state): int(n) for state, n in conn.execute(query)}


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    """Due, not leased by a live worker, of an enabled subscription, and not behind an
    unfinished earlier delivery of the same job to the same subscription."""
    earlier = deliveries.alias("earlier")
    return sa.and_(
        deliveries.c.state == DeliveryState.PENDING.value,
        deliveries.c.next_attempt_at <= now,
        sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
        sa.select(subscriptions.c.enabled)
        .where(subscriptions.c.id == deliveries.c.subscription_id)
        .scalar_subquery(),
        ~sa.exists().where(
            earlier.c.subscription_id == deliveries.c.subscription_id,
            earlier.c.order_key == deliveries.c.order_key,
            earlier.c.state == DeliveryState.PENDING.value,
            sa.or_(
                earlier.c.event_seq < deliveries.c.event_seq,
                sa.and_(
                    earlier.c.event_seq == deliveries.c.event_seq, earlier.c.id < deliveries.c.id
                ),
            ),
        ),
    )


def has_claimable(conn: Connection, now: datetime) -> bool:
    query = sa.select(deliveries.c.id).where(_claimable(now)).limit(1)
    return conn.execute(query).first() is not None


def claim_deliveries(
    conn: Connection, *, now: datetime, owner: str, lease_until: datetime, limit: int
) -> list[Claim]:
    """Lease up to ``limit`` claimable deliveries to ``owner``; rows another worker is
    claiming at the same moment are skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
    SQLite has one writer at a time)."""
    ids = [
        int(i)
        for i in conn.execute(
            sa.select(deliveries.c.id)
            .where(_claimable(now))
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=deliveries)
        ).scalars()
    ]
    if not ids:
        return []
    conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.id.in_(ids))
        .values(lease_owner=owner, lease_until=lease_until)
    )
    query = (
        sa.select(
            deliveries.c.id.label("delivery_id"),
            deliveries.c.attempts,
            deliveries.c.origin,
            *(c.label(f"s_{c.name}") for c in subscriptions.c),
            *(c.label(f"e_{c.name}") for c in events.c),
        )
        .join(subscriptions, subscriptions.c.id == deliveries.c.subscription_id)
        .join(events, events.c.seq == deliveries.c.event_seq)
        .where(deliveries.c.id.in_(ids))
        .order_by(deliveries.c.id)
    )
    claims = []
    for m in conn.execute(query).mappings():
        claims.append(
            Claim(
                delivery_id=int(m["delivery_id"]),
                attempt=int(m["attempts"]) + 1,
                lease_owner=owner,
                origin=m["origin"],
                subscription=Subscription(**{c.name: m[f"s_{c.name}"] for c in subscriptions.c}),
                event=Event(**{c.name: m[f"e_{c.name}"] for c in events.c}),
            )
        )
    return claims


_FINISH = (
    sa.update(deliveries)
    .where(deliveries.c.id == sa.bindparam("b_id"))
    .values(
        state=sa.bindparam("state"),
        attempts=sa.bindparam("attempts"),
        next_attempt_at=sa.bindparam("next_attempt_at", type_=UTCDateTime),
        completed_at=sa.bindparam("completed_at", type_=UTCDateTime),
        last_status_code=sa.bindparam("last_status_code"),
        last_error=sa.bindparam("last_error"),
        lease_owner=None,
        lease_until=None,
    )
)


def renew_leases(conn: Connection, owner: str, ids: list[int], until: datetime) -> None:
    """Extend ``owner``'s leases on deliveries it is still attempting."""
    conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.id.in_(ids), deliveries.c.lease_owner == owner)
        .values(lease_until=until)
    )


def finish_attempts(
    conn: Connection, owner: str, updates: list[dict[str, Any]], attempts: list[dict[str, Any]]
) -> set[int]:
    """Record attempts and move their deliveries on. Each update names ``id``, ``state``,
    ``attempts``, ``next_attempt_at``, ``completed_at``, ``last_status_code`` and
    ``last_error``; it applies only while ``owner`` still holds the delivery's lease (a lapsed
    lease belongs to whoever claimed the delivery since). Returns the ids that applied."""
    if attempts:
        conn.execute(sa.insert(delivery_attempts), attempts)
    if not updates:
        return set()
    held = set(
        conn.execute(
            sa.select(deliveries.c.id)
            .where(
                deliveries.c.id.in_([u["id"] for u in updates]),
                deliveries.c.lease_owner == owner,
                deliveries.c.state == DeliveryState.PENDING.value,
            )
            .with_for_update()
        ).scalars()
    )
    rows = [{**u, "b_id": u["id"]} for u in updates if u["id"] in held]
    if rows:
        conn.execute(_FINISH, [{k: v for k, v in r.items() if k != "id"} for r in rows])
    return {int(i) for i in held}


def record_failure(conn: Connection, subscription_id: str, now: datetime) -> datetime | None:
    """Note a failed attempt; returns since when the subscription has been failing (``None``
    when it is gone)."""
    conn.execute(
        sa.update(subscriptions)
        .where(subscriptions.c.id == subscription_id)
        .values(
            failing_since=sa.func.coalesce(subscriptions.c.failing_since, now),
            last_failure_at=now,
            successes_in_a_row=0,
        )
    )
    query = sa.select(subscriptions.c.failing_since).where(subscriptions.c.id == subscription_id)
    value: datetime | None = conn.execute(query).scalar_one_or_none()
    return value


def record_success(
    conn: Connection, subscription_id: str, count: int, *, streak: int, quiet_since: datetime
) -> None:
    """Note ``count`` 2xx in a row; a failing subscription is healthy again after ``streak``
    in a row, or when its last failure was before ``quiet_since``."""
    row = subscriptions.c
    conn.execute(
        sa.update(subscriptions)
        .where(row.id == subscription_id)
        .values(successes_in_a_row=row.successes_in_a_row + count)
    )
    conn.execute(
        sa.update(subscriptions)
        .where(
            row.id == subscription_id,
            row.failing_since.is_not(None),
            sa.or_(row.successes_in_a_row >= streak, row.last_failure_at < quiet_since),
        )
        .values(failing_since=None)
    )


def disable_subscription(
    conn: Connection, subscription_id: str, reason: str, now: datetime
) -> bool:
    """Disable an enabled subscription; False when it was not enabled (or is gone)."""
    result = conn.execute(
        sa.update(subscriptions)
        .where(subscriptions.c.id == subscription_id, subscriptions.c.enabled)
        .values(enabled=False, disabled_reason=reason, updated_at=now)
    )
    return bool(result.rowcount)


def prune_deliveries(conn: Connection, *, finished_before: datetime, limit: int) -> int:
    """Delete up to ``limit`` deliveries finished (succeeded or given up) before the time,
    with their attempts; pending ones are never touched. Returns how many went."""
    old = (
        sa.select(deliveries.c.id)
        .where(
            deliveries.c.state != DeliveryState.PENDING.value,
            deliveries.c.completed_at < finished_before,
        )
        .order_by(deliveries.c.id)
        .limit(limit)
    )
    ids = [int(i) for i in conn.execute(old).scalars()]
    if ids:
        conn.execute(sa.delete(delivery_attempts).where(delivery_attempts.c.delivery_id.in_(ids)))
        conn.execute(sa.delete(deliveries).where(deliveries.c.id.in_(ids)))
    return len(ids)


def list_deliveries(
    conn: Connection,
    subscription_id: str,
    *,
    states: Sequence[str] = (),
    before: int | None = None,
    limit: int = 50,
) -> list[Delivery]:
    """A subscription's deliveries, newest first, each with its attempts."""
    query = (
        sa.select(deliveries, events.c.id.label("event_id"), events.c.type.label("event_type"))
        .join(events, events.c.seq == deliveries.c.event_seq)
        .where(deliveries.c.subscription_id == subscription_id)
        .order_by(deliveries.c.id.desc())
        .limit(limit)
    )
    if states:
        query = query.where(deliveries.c.state.in_(list(states)))
    if before is not None:
        query = query.where(deliveries.c.id < before)
    rows = list(conn.execute(query).mappings())
    history: dict[int, list[DeliveryAttempt]] = {}
    if rows:
        attempts_query = (
            sa.select(delivery_attempts)
            .where(delivery_attempts.c.delivery_id.in_([r["id"] for r in rows]))
            .order_by(delivery_attempts.c.id)
        )
        for a in conn.execute(attempts_query).mappings():
            values = {k: v for k, v in a.items() if k != "id"}
            history.setdefault(int(a["delivery_id"]), []).append(DeliveryAttempt(**values))
    fields = {f.name for f in dataclasses.fields(Delivery)} - {"history"}
    return [
        Delivery(**{k: r[k] for k in fields}, history=history.get(int(r["id"]), [])) for r in rows
    ]


def figures(conn: Connection, now: datetime) -> Figures:
    pending = sa.select(
        sa.func.count(), sa.func.min(deliveries.c.created_at)
    ).where(
        deliveries.c.state == DeliveryState.PENDING.value,
        deliveries.c.subscription_id.in_(
            sa.select(subscriptions.c.id).where(subscriptions.c.enabled)
        ),
    )  # fmt: skip
    count, oldest = conn.execute(pending).one()
    if isinstance(oldest, str):  # SQLite's min() loses the column type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    disabled = conn.execute(sa.select(sa.func.count()).where(~subscriptions.c.enabled)).scalar_one()
    return Figures(
        quarantine_size=count_quarantined(conn),
        delivery_backlog=int(count),
        delivery_backlog_oldest_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        subscriptions_disabled=int(disabled),
    )
