"""Floors for the ingest benchmark: what the same gunicorn does with only part of cirelay.

``minimal_application`` — the floor ``bench/ingest.py`` runs as its third server: raw WSGI
(no Flask), libxml2 parse (no DTD, no entities, no network) and libxml2 validation against
``schemas/notification.xsd``, then one row per notification (job, sha256 of the body, body)
through a group committer: SQLite in WAL with ``synchronous=FULL`` and writers queued on a
file lock as cirelay's are, or PostgreSQL when ``CIRELAY_DATABASE_URL`` names one. Nothing
else: no report, no job state, no dedup by content, no events, no metrics. No receiver that
validates and durably commits every notification does less, so ``floor/bare`` bounds the
ratio any such receiver can reach on the machine.

``transaction_application`` — the floor of issue 2 section 4 (``bench/ingest.py`` runs it as a
fourth server): the same raw WSGI, parse and validation, and then what that section asks of
the transaction, at the least: the raw notification, the job's new state and an outbox event
in one transaction (one per batch, group commit), a repeated notification recorded once
(sha256 of the body), forward-only states. Still nothing else: no callback token, no report
beyond the leaf elements, no content digest, no metrics, no logging. The jobs are copied from
cirelay's database at start. On PostgreSQL (issue 5's fleet) it also does what several
replicas sharing the database need, at the least: the batch's job rows locked, and an events
lock (as cirelay's) held until the commit, so events become visible in sequence order.

``application`` (Flask) with ``FLOOR_MODE`` measures parts of cirelay itself:

    FLOOR_MODE=parse   read the body and run cirelay's parse_notification (UTF-8, caps, libxml2
                       parse and XSD validation, the report) — no database at all
    FLOOR_MODE=commit  the same, then one row per notification as above

    .venv/bin/python bench/ingest.py --baseline bench.floor_app:application   # FLOOR_MODE=parse
    FLOOR_MODE=commit .venv/bin/python bench/ingest.py --baseline bench.floor_app:application
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request
from lxml import etree

from app.jobs import is_transition_allowed
from app.models import JobState
from app.notifications import parse_notification
from app.schemas import DEFAULT_SCHEMA_DIR, SchemaSet
from app.store import WriterLock

MODE = os.environ.get("FLOOR_MODE", "parse")
_schemas = SchemaSet.load()
_queue: queue.SimpleQueue[tuple[tuple[str, str, bytes], Future[None]]] = queue.SimpleQueue()
_started = [0]

application = Flask(__name__)
_starting = threading.Lock()


def _committed(item: Any, to: queue.SimpleQueue[Any], started: list[int], committer: Any) -> None:
    """Queue ``item`` for this process's ``committer`` thread (started on first use, and
    again in each forked worker) and wait until its batch is committed."""
    if started[0] != os.getpid():
        with _starting:
            if started[0] != os.getpid():
                threading.Thread(target=committer, daemon=True).start()
                started[0] = os.getpid()
    done: Future[None] = Future()
    to.put((item, done))
    done.result()


def _open_sqlite(path: str) -> sqlite3.Connection:
    """SQLite as cirelay opens it: WAL, ``synchronous=FULL``, a busy timeout, our BEGINs."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
        db.execute(f"PRAGMA {pragma}")
    return db


def _drain(batch: list[Any], source: queue.SimpleQueue[Any]) -> list[Any]:
    """``batch`` with everything queued in ``source`` meanwhile added."""
    while True:
        try:
            batch.append(source.get_nowait())
        except queue.Empty:
            return batch


def _committer() -> None:
    """Group commit of one row per notification: SQLite (WAL, synchronous=FULL, writers
    queued on a file lock as cirelay's are), or PostgreSQL when ``CIRELAY_DATABASE_URL``
    names one (psycopg 3, one transaction per batch, the server's default durability)."""
    url = os.environ.get("CIRELAY_DATABASE_URL", "")
    if url.startswith("postgresql"):
        _pg_committer(_psycopg_url(url))
        return
    path = os.environ.get("FLOOR_SQLITE_PATH") or os.path.join(
        tempfile.gettempdir(), f"cirelay-floor-{os.getppid()}.db"
    )
    db = _open_sqlite(path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS n (id INTEGER PRIMARY KEY, job TEXT, digest TEXT, "
        "body BLOB, UNIQUE (job, digest))"
    )
    lock = WriterLock(path + ".writer-lock")
    while True:
        batch = _drain([_queue.get()], _queue)
        with lock:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO n (job, digest, body) VALUES (?, ?, ?)",
                           [row for row, _ in batch])  # fmt: skip
            db.execute("COMMIT")
        for _, future in batch:
            future.set_result(None)


def _psycopg_url(url: str) -> str:
    """cirelay's SQLAlchemy URL as psycopg takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def _pg_committer(url: str) -> None:
    import psycopg

    with psycopg.connect(url) as db:
        with db.transaction():
            db.execute(
                "CREATE TABLE IF NOT EXISTS floor_n (id BIGSERIAL PRIMARY KEY, job TEXT, "
                "digest TEXT, body BYTEA, UNIQUE (job, digest))"
            )
        while True:
            batch = _drain([_queue.get()], _queue)
            with db.transaction(), db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO floor_n (job, digest, body) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [row for row, _ in batch],
                )
            for _, future in batch:
                future.set_result(None)


@application.post("/callbacks/ci/<first>/<second>")
def notification(first: str, second: str) -> str:
    body = request.get_data()
    parsed = parse_notification(body, request.content_type or "", _schemas)
    if MODE == "commit":
        _committed((first, parsed.reports[0].digest, body), _queue, _started, _committer)
    return "ok"


# --- the least any durable, validating receiver must do, without Flask ---------------------

_xsd = etree.XMLSchema(etree.parse(str(DEFAULT_SCHEMA_DIR / "notification.xsd")))
_safe = threading.local()


def _validated(environ: dict[str, Any]) -> tuple[bytes, Any] | None:
    """The body and its root, parsed with libxml2 (no DTD, no entities, no network) and
    valid against the notification XSD; None otherwise."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    parser = getattr(_safe, "parser", None)
    if parser is None:
        parser = _safe.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
        )
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError:
        return None
    return (body, root) if _xsd.validate(root) else None


def _bad_request(start_response: Any) -> list[bytes]:
    start_response("400 Bad Request", [("Content-Length", "0")])
    return [b""]


def minimal_application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Raw WSGI: read the body, parse it with libxml2 (no DTD, no entities, no network),
    validate it against the notification XSD with libxml2, and commit one row (job, sha256 of
    the body, body) through the group committer above. No Flask, no report, no bookkeeping:
    a floor under any receiver that validates and commits every notification durably."""
    valid = _validated(environ)
    if valid is None:
        return _bad_request(start_response)
    body, _ = valid
    job = environ["PATH_INFO"].rsplit("/", 2)[-2]
    _committed((job, hashlib.sha256(body).hexdigest(), body), _queue, _started, _committer)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


# --- the least a receiver doing issue 2 section 4's transaction must do ---------------------

_TxItem = tuple[str, str, str, bytes, str]  # job, digest, state, body, the job's view
_Rows = list[tuple[Any, ...]]
_tx_queue: queue.SimpleQueue[tuple[_TxItem, Future[None]]] = queue.SimpleQueue()
_tx_started = [0]
_TX_TABLES = (
    "CREATE TABLE IF NOT EXISTS j (id TEXT PRIMARY KEY, ci_job_id TEXT UNIQUE, "
    "state TEXT NOT NULL, detail TEXT, updated_at TEXT, last_notified_at TEXT)",
    "CREATE INDEX IF NOT EXISTS ix_j_state ON j (state, id)",
    "CREATE TABLE IF NOT EXISTS n (id INTEGER PRIMARY KEY, job TEXT NOT NULL, "
    "digest TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT NOT NULL, body BLOB NOT NULL, "
    "received_at TEXT NOT NULL, UNIQUE (job, digest))",
    "CREATE TABLE IF NOT EXISTS e (seq INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
    "type TEXT NOT NULL, job_id TEXT NOT NULL, time TEXT NOT NULL, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_e_job ON e (job_id, seq)",
)


def _tx_committer() -> None:
    items = _tx_queue  # this thread's, even if a test gives the module a new one
    url = os.environ.get("CIRELAY_DATABASE_URL", "")
    if url.startswith("postgresql"):
        _tx_pg_committer(_psycopg_url(url), items)
        return
    path = os.environ["FLOOR_SQLITE_PATH"]
    db = _open_sqlite(path)
    lock = WriterLock(path + ".writer-lock")
    with lock:  # the first worker here creates the tables and copies cirelay's jobs
        for statement in _TX_TABLES:
            db.execute(statement)
        if db.execute("SELECT count(*) FROM j").fetchone()[0] == 0:
            jobs_db = os.environ["FLOOR_JOBS_DATABASE_URL"].removeprefix("sqlite:///")
            db.execute("ATTACH DATABASE ? AS cirelay", (jobs_db,))
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO j (id, ci_job_id, state, detail) "
                "SELECT id, ci_job_id, 'Submitted', detail FROM cirelay.jobs"
            )
            db.execute("COMMIT")
            db.execute("DETACH DATABASE cirelay")
    while True:
        batch = [items.get()]
        with lock:
            db.execute("BEGIN IMMEDIATE")
            _drain(batch, items)  # what arrived while waiting for the lock joins the batch
            _tx_apply(db, [item for item, _ in batch])
            db.execute("COMMIT")
        for _, future in batch:
            future.set_result(None)


def _tx_rows(
    items: list[_TxItem], states: dict[str, str], seen: set[tuple[str, str]], now: Any
) -> tuple[_Rows, _Rows, _Rows]:
    """The rules, in memory and in arrival order, given the jobs' ``states`` and the digests
    ``seen`` for them: the rows of notifications, job changes and events to write."""
    notifications: _Rows = []
    changed: _Rows = []
    events: _Rows = []
    for job, digest, state, body, view in items:
        if (job, digest) in seen:
            continue  # the same notification again: recorded once
        seen.add((job, digest))
        current = states.get(job)
        moves = is_transition_allowed(  # cirelay's own rule
            JobState(current) if current else None, JobState(state)
        )
        outcome = "accepted" if moves else "stale"
        notifications.append((job, digest, state, outcome, body, now))
        if moves:
            states[job] = state
            changed.append((state, view, now, now, job))
            data = f'{{"jobId":"{job}","previous":"{current}","job":{view}}}'
            events.append((os.urandom(12).hex(), f"job.{state.lower()}", job, now, data))
    return notifications, changed, events


def _tx_apply(db: sqlite3.Connection, items: list[_TxItem]) -> None:
    """The jobs' states and digests read in two statements, the rules applied in memory in
    arrival order, the rows written with one ``executemany`` per table."""
    ids = sorted({job for job, *_ in items})
    marks = ",".join("?" * len(ids))
    states = dict(db.execute(f"SELECT id, state FROM j WHERE id IN ({marks})", ids).fetchall())
    seen = set(db.execute(f"SELECT job, digest FROM n WHERE job IN ({marks})", ids).fetchall())
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    notifications, changed, events = _tx_rows(items, states, seen, now)
    db.executemany(
        "INSERT INTO n (job, digest, state, outcome, body, received_at) VALUES (?, ?, ?, ?, ?, ?)",
        notifications,
    )
    db.executemany(
        "UPDATE j SET state = ?, detail = ?, updated_at = ?, last_notified_at = ? WHERE id = ?",
        changed,
    )
    db.executemany("INSERT INTO e (id, type, job_id, time, data) VALUES (?, ?, ?, ?, ?)", events)


# the same on PostgreSQL, for a fleet: job rows locked (other replicas write them too), and the
# events written in sequence order across replicas: an advisory lock held until the commit, as
# cirelay's events lock. Taken first, and the queue drained once it is held, as cirelay does:
# measured against taking it just before the events (held the least), the batches grow while
# the other workers commit, and the floor rose from 0.38-0.39 to 0.42 of bare
_TX_PG_TABLES = (
    "CREATE TABLE IF NOT EXISTS floor_tx_j (id TEXT PRIMARY KEY, ci_job_id TEXT UNIQUE, "
    "state TEXT NOT NULL, detail TEXT, updated_at TIMESTAMPTZ, last_notified_at TIMESTAMPTZ)",
    "CREATE INDEX IF NOT EXISTS ix_floor_tx_j_state ON floor_tx_j (state, id)",
    "CREATE TABLE IF NOT EXISTS floor_tx_n (id BIGSERIAL PRIMARY KEY, job TEXT NOT NULL, "
    "digest TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT NOT NULL, body BYTEA NOT NULL, "
    "received_at TIMESTAMPTZ NOT NULL, UNIQUE (job, digest))",
    "CREATE TABLE IF NOT EXISTS floor_tx_e (seq BIGSERIAL PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
    "type TEXT NOT NULL, job_id TEXT NOT NULL, time TIMESTAMPTZ NOT NULL, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_floor_tx_e_job ON floor_tx_e (job_id, seq)",
)
#: the floor's events lock and the lock its first worker creates the tables under
_TX_PG_EVENTS_LOCK, _TX_PG_SETUP_LOCK = 0x666C6F6F72, 0x666C6F6F73


def _tx_pg_committer(url: str, items: queue.SimpleQueue[Any]) -> None:
    import psycopg

    with psycopg.connect(url) as db:
        with db.transaction():  # the first worker here creates the tables, copies the jobs
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_TX_PG_SETUP_LOCK,))
            for statement in _TX_PG_TABLES:
                db.execute(statement)
            db.execute(
                "INSERT INTO floor_tx_j (id, ci_job_id, state, detail) "
                "SELECT id, ci_job_id, 'Submitted', detail::text FROM jobs "
                "WHERE NOT EXISTS (SELECT FROM floor_tx_j)"
            )
        while True:
            batch = [items.get()]
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_TX_PG_EVENTS_LOCK,))
                _drain(batch, items)  # what arrived while waiting for the lock joins the batch
                _tx_pg_apply(db, [item for item, _ in batch])
            for _, future in batch:
                future.set_result(None)


def _tx_pg_apply(db: Any, items: list[_TxItem]) -> None:
    """As :func:`_tx_apply`: the jobs locked and read with their digests in one statement,
    the rules in memory, then the writes in one pipeline (one round trip)."""
    ids = sorted({job for job, *_ in items})
    rows = db.execute(
        "SELECT j.id, j.state, array(SELECT n.digest FROM floor_tx_n n WHERE n.job = j.id) "
        "FROM floor_tx_j j WHERE j.id = ANY(%s) ORDER BY j.id FOR UPDATE",
        (ids,),
    ).fetchall()
    states = {job: state for job, state, _ in rows}
    seen = {(job, digest) for job, _, digests in rows for digest in digests}
    now = datetime.now(UTC)
    notifications, changed, events = _tx_rows(items, states, seen, now)
    with db.pipeline(), db.cursor() as cur:
        cur.executemany(
            "INSERT INTO floor_tx_n (job, digest, state, outcome, body, received_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            notifications,
        )
        cur.executemany(
            "UPDATE floor_tx_j SET state = %s, detail = %s, updated_at = %s, "
            "last_notified_at = %s WHERE id = %s",
            changed,
        )
        cur.executemany(
            "INSERT INTO floor_tx_e (id, type, job_id, time, data) VALUES (%s, %s, %s, %s, %s)",
            events,
        )


def transaction_application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Raw WSGI: parse and validate as :func:`minimal_application`, then the notification,
    the job's state and an event in one (group) transaction."""
    valid = _validated(environ)
    detail = valid[1].find("JobsDetail") if valid else None
    state = detail.findtext("State") if detail is not None else None
    if valid is None or detail is None or state is None:
        return _bad_request(start_response)
    body = valid[0]
    # the job as the notification tells it: its leaf elements (cirelay keeps a typed view)
    view = json.dumps({e.tag: e.text for e in detail.iter() if len(e) == 0 and e.text})
    job = environ["PATH_INFO"].rsplit("/", 2)[-2]
    item = (job, hashlib.sha256(body).hexdigest(), state, body, view)
    _committed(item, _tx_queue, _tx_started, _tx_committer)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
