"""Engines, connections and transactions: SQLite's pragmas and writer lock, PostgreSQL's
pool, the JSON codec of both, which errors are worth a retry, psycopg's pipeline mode and the
lock that orders the writers of events."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import Connection, Engine

from app.errors import UnavailableError


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long PostgreSQL may keep us waiting, so that a database that stops answering (a
    silent network partition: connections open, nothing coming back) costs a request a 503
    in about two seconds instead of a hang. SQLite is local and ignores these.

    - ``connect``: opening a connection (libpq's ``connect_timeout``; 2 s is its minimum);
    - ``statement``: the server's ``statement_timeout``, and how long the client waits for any
      answer on a connection (this plus :data:`ANSWER_GRACE`, so a slow statement normally
      ends with the server's own cancel and the connection stays usable); ``None``: no limit
      (migrations, which may build an index for minutes);
    - ``checkout``: waiting for a pooled connection to come free;
    - ``ping``: the check of a pooled connection before it is handed out.

    TCP keepalive and ``tcp_user_timeout`` (:data:`KEEPALIVE`) also drop a connection whose
    packets go unacknowledged, which a real partition does and a proxy on loopback cannot.
    """

    connect: float = 2.0
    statement: float | None = 1.5
    checkout: float = 2.0
    ping: float = 0.5

    @property
    def answer(self) -> float | None:
        """How long the client waits for the server's answer to anything it sent."""
        return None if self.statement is None else self.statement + ANSWER_GRACE


#: what the client waits beyond the server's ``statement_timeout``
ANSWER_GRACE = 0.25
#: libpq's TCP settings: probes after 5 s idle, every 2 s, 3 unanswered = dead; and data
#: unacknowledged for 5 s = dead
KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
}


def listening_connection(url: str) -> psycopg.Connection[Any]:
    """A connection of its own for ``LISTEN`` (autocommit), opened with the engine's connect
    timeout and TCP keepalive, so a silent partition drops it and its owner reconnects
    instead of waiting on a dead socket for ever."""
    conninfo = make_conninfo(
        url.replace("postgresql+psycopg://", "postgresql://"),
        connect_timeout=max(2, round(DatabaseTimeouts().connect)),
        **KEEPALIVE,
    )
    return psycopg.connect(conninfo, autocommit=True)


class NoAnswerError(psycopg.OperationalError):
    """The database did not answer within :attr:`DatabaseTimeouts.answer` (or the ping's
    limit): the connection is dropped, as if the network had cut it."""


#: what psycopg's ``wait`` raises when its timeout runs out (internal to psycopg, hence the
#: lookup; psycopg 3.3's name)
_WAIT_TIMEOUT: type[Exception] = psycopg.errors._WaitTimeout


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection that waits for the server at most :attr:`answer_timeout` seconds.

    psycopg runs every exchange with the server (a statement, a commit, a pipeline's sync) as
    a generator driven by :meth:`wait`, which takes a timeout; this gives one to every call.
    When it runs out the connection is closed (so the pool discards it and SQLAlchemy reports
    it invalidated) and :class:`NoAnswerError` raised.
    """

    answer_timeout: float | None = None

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) < 2 and kwargs.get("timeout") is None:
            kwargs["timeout"] = self.answer_timeout
        limit = kwargs["timeout"] if len(args) < 2 else args[1]
        try:
            return super().wait(gen, *args, **kwargs)
        except _WAIT_TIMEOUT:
            self.pgconn.finish()  # broken now: the pool drops it, SQLAlchemy sees a disconnect
            raise NoAnswerError(f"the database did not answer within {limit:g} s") from None


#: SQLite's ``synchronous`` levels in WAL mode. FULL: a commit returns once the log is on
#: disk. NORMAL: once it is written (it survives the process's crash, never corrupts the
#: database, and a power loss may take back the last commits; the next FULL commit of any
#: connection makes them durable too, the log being written in order)
_DURABLE = "FULL"
_REDONE_IF_LOST = "NORMAL"


def create_engine(
    url: str, *, pool_size: int = 5, timeouts: DatabaseTimeouts | None = None
) -> Engine:
    """An engine with the settings each backend needs.

    SQLite: WAL, ``synchronous=FULL`` (durable at commit), foreign keys on, a busy timeout as
    a last resort, and ``BEGIN IMMEDIATE`` for writing transactions so one takes the write
    lock up front rather than failing to upgrade a read lock half-way. Writers also queue on
    a file lock next to the database (see :func:`transaction`). Readers use plain ``BEGIN``.
    A transaction run with the execution option ``cirelay_redone_if_lost`` commits with
    ``synchronous=NORMAL`` (see :class:`HeldConnection`).

    PostgreSQL: every wait bounded (:class:`DatabaseTimeouts`, the defaults unless given).
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **_JSON)
        database = sqlite_file(engine)
        if database is not None:
            _WRITER_LOCKS[engine] = WriterLock(f"{database}.writer-lock")

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            for pragma in (
                "journal_mode=WAL",
                f"synchronous={_DURABLE}",
                "foreign_keys=ON",
                "busy_timeout=30000",
            ):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()
            _record.info["synchronous"] = _DURABLE

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            options = conn.get_execution_options()
            # the level is the connection's, and set outside a transaction: each
            # transaction sets it before its BEGIN when it needs the other one
            level = _REDONE_IF_LOST if options.get("cirelay_redone_if_lost") else _DURABLE
            info = conn.connection.info
            if info.get("synchronous") != level:
                conn.exec_driver_sql(f"PRAGMA synchronous={level}")
                info["synchronous"] = level
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("cirelay_writer") else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    limits = timeouts or DatabaseTimeouts()
    connect_args: dict[str, Any] = {
        "connect_timeout": max(2, round(limits.connect)),  # whole seconds, 2 at least
        "application_name": "cirelay",
        **KEEPALIVE,
    }
    if limits.statement is not None:
        connect_args["options"] = f"-c statement_timeout={round(limits.statement * 1000)}"
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=limits.checkout,  # a request waits this long for a connection, then 503
        pool_recycle=1800,
        connect_args=connect_args,
        **_JSON,
    )

    @sa.event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> BoundedConnection:
        conn = BoundedConnection.connect(*cargs, **cparams)
        conn.answer_timeout = limits.answer
        return conn

    @sa.event.listens_for(engine, "connect")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info[_FRESH] = True

    @sa.event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        """SQLAlchemy's pre-ping, with its own short limit: a pooled connection that does
        not answer in time is dropped and the caller gets the error at once (a 503), rather
        than a new connection that may wait ``connect`` more."""
        if record.info.pop(_FRESH, False):
            return  # it has just answered the handshake
        dbapi_conn.answer_timeout = limits.ping
        try:
            dbapi_conn.execute(";")
        except psycopg.OperationalError as exc:
            if dbapi_conn.broken and not isinstance(exc, NoAnswerError):
                raise sa.exc.DisconnectionError() from exc  # dropped: the pool reconnects
            raise
        finally:
            dbapi_conn.answer_timeout = limits.answer

    return engine


#: a connection's record says it was opened and has not been handed out yet
_FRESH = "cirelay_fresh"


# --- the JSON codec -----------------------------------------------------------------------


#: what orjson leaves to ``json_dumps``'s fallback (the standard library raises for them)
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def json_dumps(value: Any) -> str:
    """JSON columns' text: orjson, much quicker than the standard library (the group
    committer encodes a job's detail, its event and the headers of every notification).
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


# --- errors -------------------------------------------------------------------------------

#: PostgreSQL SQLSTATEs worth one more try: serialization failure, deadlock
_RETRY_SQLSTATES = ("40001", "40P01")


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot serve us now — unreachable, dropped the connection, did not answer
    in time, out of resources (PostgreSQL classes 08, 53, 57P), too busy to finish a statement
    within ``statement_timeout`` (57014), or any SQLite operational error (locked past
    the busy timeout, disk full): not the request's fault, worth retrying later (503)."""
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        code = getattr(exc.orig, "sqlstate", None) or ""
        return not code or code.startswith(("08", "53", "57P", _STATEMENT_TIMEOUT))
    return False


#: the server cancelled a statement that ran past ``statement_timeout``: it is too busy
_STATEMENT_TIMEOUT = "57014"


def unavailable_error(exc: BaseException) -> UnavailableError | None:
    """The service's answer to a database that cannot serve us now (:func:`is_unavailable`):
    503, so CI and clients retry. ``None`` for any other error, which is our own fault. The
    one place a database error becomes "unavailable": the web layer's handler and
    :func:`raising_unavailable` both ask it."""
    if not is_unavailable(exc):
        return None
    return UnavailableError("the database is not reachable; try again")


@contextmanager
def raising_unavailable() -> Iterator[None]:
    """Run the block; a database error that :func:`unavailable_error` turns into a 503 is
    raised as that (chained), any other goes on as it is."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        error = unavailable_error(exc)
        if error is None:
            raise
        raise error from exc


def is_transient(exc: BaseException) -> bool:
    """Whether running the same transaction again may well succeed at once: a serialization
    failure or deadlock, a connection dropped in the middle (the pool hands out a fresh one),
    SQLite locked. Not a database that cannot be reached at all, one that did not answer in
    time, or a pool with no connection free: those waited their timeout already, and waiting
    it twice more helps nobody."""
    if isinstance(exc, sa.exc.DBAPIError) and isinstance(exc.orig, NoAnswerError):
        return False  # it waited its limit already
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.OperationalError):
        code = getattr(exc.orig, "sqlstate", None) or ""
        return code.startswith(_RETRY_SQLSTATES) or "database is locked" in str(exc.orig)
    return False


# --- connections and transactions ---------------------------------------------------------


def sqlite_file(engine: Engine) -> str | None:
    """The file of a SQLite database; ``None`` for PostgreSQL or an in-memory database."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    return database


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

    With ``reader``, its transactions only read: on SQLite they never queue for the writer
    lock (a reader kept beside a writer: the worker's, whose rounds read before they write).

    With ``redone_if_lost``, on SQLite its commits do not wait for the disk
    (``synchronous=NORMAL``): for writes that are done again when a power loss takes them
    back, never for what the service must not lose. The worker's are such: a delivery's
    fan-out, lease or result lost is fanned out, claimed or sent again (deliveries are at
    least once, and carry their event's id for the subscriber to drop the copy).

    Not thread-safe: one per thread."""

    def __init__(
        self, engine: Engine, *, reader: bool = False, redone_if_lost: bool = False
    ) -> None:
        self.engine = engine
        self.reader = reader
        self.redone_if_lost = redone_if_lost
        self._conn: Connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One writing transaction: committed when the block ends, rolled back if it raises.
        On SQLite it first queues for the writer lock (see :class:`WriterLock`)."""
        lock = None if self.reader else _WRITER_LOCKS.get(self.engine)
        with lock or contextlib.nullcontext():
            conn = self._connection()
            try:
                with conn.begin():
                    yield conn
            except BaseException:
                self.close()
                raise

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
            self._conn.execution_options(
                cirelay_writer=not self.reader, cirelay_redone_if_lost=self.redone_if_lost
            )
        return self._conn

    def data_version(self, *, connect: bool = False) -> int | None:
        """SQLite: the held connection's ``PRAGMA data_version``, which changes when another
        connection, of any process, commits, and never for this one's own commits (each
        connection counts its own: versions compare only while the same one is held).
        ``None`` when it fails, on PostgreSQL, or when no connection is held, unless
        ``connect`` takes one first."""
        if self.engine.dialect.name != "sqlite" or (self._conn is None and not connect):
            return None
        try:
            driver = self._connection().connection.driver_connection
            return int(driver.execute("PRAGMA data_version").fetchone()[0])  # type: ignore[union-attr]
        except Exception:  # the next transaction finds out, and drops it
            return None

    def close(self) -> None:
        """Give the connection back to the pool (a broken one is discarded there)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # it may be broken: that is why it goes
                conn.close()


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


#: /readyz answers within this long whatever the database does (a probe's own timeout is
#: commonly 1 s to a few seconds; the answer must come before it)
READY_TIMEOUT_SECONDS = 1.5


class _DatabaseProbe:
    """``store.ping`` on a thread of its own, waited for at most
    :data:`READY_TIMEOUT_SECONDS`: the engine bounds each wait, but a checkout, a ping and a
    new connection add up. One ping at a time: probes that come while one runs wait for it,
    so a database that does not answer never piles up threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: weakref.WeakKeyDictionary[Engine, Future[None]] = weakref.WeakKeyDictionary()

    def check(self, engine: Engine) -> str:
        with self._lock:
            running = self._running.get(engine)
            if running is None or running.done():
                running = self._running[engine] = Future()
                threading.Thread(
                    target=self._ping, args=(engine, running), name="readyz", daemon=True
                ).start()
        try:
            running.result(timeout=READY_TIMEOUT_SECONDS)
        except FutureTimeout:
            return "no answer"
        except sa.exc.SQLAlchemyError:
            return "unreachable"
        return "ok"

    @staticmethod
    def _ping(engine: Engine, result: Future[None]) -> None:
        try:
            ping(engine)
        except BaseException as exc:  # handed to the waiting request
            result.set_exception(exc)
        else:
            result.set_result(None)


_PROBE = _DatabaseProbe()


def check_database(engine: Engine) -> str:
    """``/readyz``'s database check, for the service and the worker alike: ``ok``, ``no
    answer`` (within :data:`READY_TIMEOUT_SECONDS`) or ``unreachable``."""
    return _PROBE.check(engine)


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


# --- the events lock (PostgreSQL) ---------------------------------------------------------

#: the PostgreSQL channel that says "new events are committed" (see
#: :class:`app.waker.EventWaker`)
EVENTS_CHANNEL = "cirelay_events"

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


def watch_pool(engine: Engine, checked_out: Callable[[int], None]) -> None:
    """Call ``checked_out(+1)`` when a connection leaves the engine's pool, ``(-1)`` when it
    comes back (the pool-in-use gauge)."""

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(*_: Any) -> None:
        checked_out(1)

    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(*_: Any) -> None:
        checked_out(-1)
