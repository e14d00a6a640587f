"""Floors for the ingest benchmark: what the same gunicorn does with only part of cirelay.

``minimal_application`` — the floor ``bench/ingest.py`` runs as its third server: raw WSGI
(no Flask), libxml2 parse (no DTD, no entities, no network) and libxml2 validation against
``schemas/notification.xsd``, then one row per notification (job, sha256 of the body, body)
through a group committer: SQLite in WAL with ``synchronous=FULL`` and writers queued on a
file lock as cirelay's are, or PostgreSQL when ``CIRELAY_DATABASE_URL`` names one. Nothing
else: no report, no job state, no dedup by content, no events, no metrics. No receiver that
validates and durably commits every notification does less, so ``floor/bare`` bounds the
ratio any such receiver can reach on the machine.

``application`` (Flask) with ``FLOOR_MODE`` measures parts of cirelay itself:

    FLOOR_MODE=parse   read the body and run cirelay's parse_notification (UTF-8, caps, libxml2
                       parse and XSD validation, the report) — no database at all
    FLOOR_MODE=commit  the same, then one row per notification as above

    .venv/bin/python bench/ingest.py --baseline bench.floor_app:application   # FLOOR_MODE=parse
    FLOOR_MODE=commit .venv/bin/python bench/ingest.py --baseline bench.floor_app:application
"""

from __future__ import annotations

import hashlib
import os
import queue
import sqlite3
import tempfile
import threading
from concurrent.futures import Future
from typing import Any

from flask import Flask, request
from lxml import etree

from app.notifications import parse_notification
from app.schemas import DEFAULT_SCHEMA_DIR, SchemaSet
from app.store import WriterLock

MODE = os.environ.get("FLOOR_MODE", "parse")
_schemas = SchemaSet.load()
_queue: queue.SimpleQueue[tuple[tuple[str, str, bytes], Future[None]]] = queue.SimpleQueue()
_started = [0]

application = Flask(__name__)


def _committer() -> None:
    """Group commit of one row per notification: SQLite (WAL, synchronous=FULL, writers
    queued on a file lock as cirelay's are), or PostgreSQL when ``CIRELAY_DATABASE_URL``
    names one (psycopg 3, one transaction per batch, the server's default durability)."""
    url = os.environ.get("CIRELAY_DATABASE_URL", "")
    if url.startswith("postgresql"):
        _pg_committer(url)
        return
    path = os.environ.get("FLOOR_SQLITE_PATH") or os.path.join(
        tempfile.gettempdir(), f"cirelay-floor-{os.getppid()}.db"
    )
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
        db.execute(f"PRAGMA {pragma}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS n (id INTEGER PRIMARY KEY, job TEXT, digest TEXT, "
        "body BLOB, UNIQUE (job, digest))"
    )
    lock = WriterLock(path + ".writer-lock")
    while True:
        batch = _next_batch()
        with lock:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO n (job, digest, body) VALUES (?, ?, ?)",
                           [row for row, _ in batch])  # fmt: skip
            db.execute("COMMIT")
        for _, future in batch:
            future.set_result(None)


def _pg_committer(url: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as db:
        with db.transaction():
            db.execute(
                "CREATE TABLE IF NOT EXISTS floor_n (id BIGSERIAL PRIMARY KEY, job TEXT, "
                "digest TEXT, body BYTEA, UNIQUE (job, digest))"
            )
        while True:
            batch = _next_batch()
            with db.transaction(), db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO floor_n (job, digest, body) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [row for row, _ in batch],
                )
            for _, future in batch:
                future.set_result(None)


def _next_batch() -> list[tuple[tuple[str, str, bytes], Future[None]]]:
    batch = [_queue.get()]
    while True:
        try:
            batch.append(_queue.get_nowait())
        except queue.Empty:
            return batch


@application.post("/callbacks/ci/<first>/<second>")
def notification(first: str, second: str) -> str:
    body = request.get_data()
    parsed = parse_notification(body, request.content_type or "", _schemas)
    if MODE == "commit":
        if _started[0] != os.getpid():
            _started[0] = os.getpid()
            threading.Thread(target=_committer, daemon=True).start()
        done: Future[None] = Future()
        _queue.put(((first, parsed.reports[0].digest, body), done))
        done.result()
    return "ok"


# --- the least any durable, validating receiver must do, without Flask ---------------------

_xsd = etree.XMLSchema(etree.parse(str(DEFAULT_SCHEMA_DIR / "notification.xsd")))
_safe = threading.local()


def minimal_application(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Raw WSGI: read the body, parse it with libxml2 (no DTD, no entities, no network),
    validate it against the notification XSD with libxml2, and commit one row (job, sha256 of
    the body, body) through the group committer above. No Flask, no report, no bookkeeping:
    a floor under any receiver that validates and commits every notification durably."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    parser = getattr(_safe, "parser", None)
    if parser is None:
        parser = _safe.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
        )
    root = etree.fromstring(body, parser)
    if not _xsd.validate(root):
        start_response("400 Bad Request", [("Content-Length", "0")])
        return [b""]
    if _started[0] != os.getpid():
        _started[0] = os.getpid()
        threading.Thread(target=_committer, daemon=True).start()
    done: Future[None] = Future()
    job = environ["PATH_INFO"].rsplit("/", 2)[-2]
    _queue.put(((job, hashlib.sha256(body).hexdigest(), body), done))
    done.result()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
