"""Floors for the ingest benchmark: what the same gunicorn does with only part of cirelay.

    FLOOR_MODE=parse   read the body and run cirelay's parse_notification (UTF-8, caps, libxml2
                       parse and XSD validation, the report) — no database at all
    FLOOR_MODE=commit  the same, then one row per notification in SQLite (WAL,
                       synchronous=FULL) through a minimal group committer on raw sqlite3

    .venv/bin/python bench/ingest.py --baseline bench.floor_app:application   # FLOOR_MODE=parse
    FLOOR_MODE=commit .venv/bin/python bench/ingest.py --baseline bench.floor_app:application

The ratio ``cirelay/floor`` then says how much of cirelay's cost lies beyond that floor.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import tempfile
import threading
from concurrent.futures import Future

from flask import Flask, request

from app.notifications import parse_notification
from app.schemas import SchemaSet

MODE = os.environ.get("FLOOR_MODE", "parse")
_schemas = SchemaSet.load()
_queue: queue.SimpleQueue[tuple[tuple[str, str, bytes], Future[None]]] = queue.SimpleQueue()
_started = [0]

application = Flask(__name__)


def _committer() -> None:
    path = os.path.join(tempfile.gettempdir(), f"cirelay-floor-{os.getppid()}.db")
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
        db.execute(f"PRAGMA {pragma}")
    db.execute(
        "CREATE TABLE IF NOT EXISTS n (id INTEGER PRIMARY KEY, job TEXT, digest TEXT, "
        "body BLOB, UNIQUE (job, digest))"
    )
    while True:
        batch = [_queue.get()]
        while True:
            try:
                batch.append(_queue.get_nowait())
            except queue.Empty:
                break
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR IGNORE INTO n (job, digest, body) VALUES (?, ?, ?)",
                       [row for row, _ in batch])  # fmt: skip
        db.execute("COMMIT")
        for _, future in batch:
            future.set_result(None)


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
