"""A local Tencent Cloud CI (VoiceSeparate jobs) for ``cirelay up``, tests and demos.

It speaks CI's HTTP API as the spec describes it (signed ``POST /jobs``, ``GET /jobs/<ids>``,
``GET /jobs``; :mod:`app.emulator.server`), runs each job Submitted → Running →
Success/Failed in ``job_seconds`` (:mod:`app.emulator.jobs`), POSTs the TaskFinish
notification with retries (:mod:`app.emulator.callbacks`), misbehaves on request
(:mod:`app.emulator.faults`) and, given a ``data_dir`` holding WAV files, really splits them
(:mod:`app.emulator.media`).

    config = EmulatorConfig.from_env()          # or EmulatorConfig(secret_id=…, secret_key=…)
    serve("127.0.0.1", 8081, config)            # blocks; SIGTERM/SIGINT stop it cleanly

Environment (``from_env``): ``CIRELAY_CI_SECRET_ID`` and ``CIRELAY_CI_SECRET_KEY`` (required:
the only key pair accepted), and, all optional:

- ``CIRELAY_EMULATOR_JOB_SECONDS``: a job's life, Submitted to finished (default 2.0)
- ``CIRELAY_EMULATOR_CALLBACK_RETRIES``: retry delays in seconds, comma-separated (default
  ``0.5,1,2,4,8,16``, i.e. at most 7 attempts; ``none``: a single attempt)
- ``CIRELAY_EMULATOR_CALLBACK_TIMEOUT``: seconds per callback attempt (default 5)
- ``CIRELAY_EMULATOR_CALLBACK_JITTER``: ± fraction of each retry delay (default 0.1)
- ``CIRELAY_EMULATOR_REGION``: serve only this region's Hosts (default: any region)
- ``CIRELAY_EMULATOR_QUEUE_IDS``: ``bucket=p<32 hex>,…`` (default: derived from the bucket)
- ``CIRELAY_EMULATOR_QUEUE_CALLBACK_URL``: the queue's callback, for jobs naming no CallBack
- ``CIRELAY_EMULATOR_QUEUE_CALLBACK_FORMAT``: ``XML`` (default) or ``JSON``
- ``CIRELAY_EMULATOR_FAIL_MARKER``: input keys containing it end Failed (default ``fail``)
- ``CIRELAY_EMULATOR_DATA_DIR``: local buckets for the real-media mode (default: off)
- ``CIRELAY_EMULATOR_SEED``: seed of every random draw (default 0)
- ``CIRELAY_EMULATOR_FAULTS``: faults at start, JSON as for ``POST /_emulator/faults``
- ``CIRELAY_EMULATOR_ADMIN``: ``0`` hides the ``/_emulator/*`` admin API (default shown)
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from app import utc_now
from app.config import ConfigError
from app.emulator.faults import FaultSettings, FaultSettingsError
from app.emulator.server import Emulator, build_app
from app.schemas import SchemaSet

__all__ = ["EmulatorConfig", "create_emulator_app", "emulator_of", "serve"]

log = logging.getLogger(__name__)

DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_QUEUE_ID = re.compile(r"p[0-9a-f]{32}")


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator needs; no field reads the environment (``from_env`` does)."""

    secret_id: str
    secret_key: str = field(repr=False)
    #: a job's life from Submitted to Success/Failed; Running after a quarter of it
    job_seconds: float = 2.0
    #: delays before the 2nd, 3rd… callback attempt; its length bounds the retries
    callback_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    callback_timeout: float = 5.0
    callback_jitter: float = 0.1
    callback_workers: int = 8
    #: when set, only Hosts of this region are served (others: InvalidHost)
    region: str | None = None
    #: bucket → queue id; a bucket not listed gets ``p`` + md5(bucket)
    queue_ids: Mapping[str, str] = field(default_factory=dict)
    #: the queue-level callback for jobs that name no CallBack (None: no callback)
    queue_callback_url: str | None = None
    queue_callback_format: str = "XML"
    #: an input Object containing this ends Failed (see app.emulator.jobs)
    fail_marker: str = "fail"
    faults: FaultSettings = field(default_factory=FaultSettings)
    #: local buckets (``data_dir/<bucket>/<key>``) for the real-media mode
    data_dir: Path | None = None
    #: serve the ``/_emulator/*`` admin API
    admin: bool = True
    #: the XSDs (``CIRELAY_SCHEMA_DIR``; default: ``schemas/`` of the source tree)
    schema_dir: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EmulatorConfig:
        """Read the variables of the module docstring; :class:`ConfigError` lists every
        problem at once."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        reader = _Reader(env, problems)
        secret_id = reader.text("CIRELAY_CI_SECRET_ID")
        secret_key = reader.text("CIRELAY_CI_SECRET_KEY")
        for name, value in (
            ("CIRELAY_CI_SECRET_ID", secret_id),
            ("CIRELAY_CI_SECRET_KEY", secret_key),
        ):
            if not value:
                problems.append(f"{name}: required (the emulator accepts only this key pair)")
        fmt = reader.text("CIRELAY_EMULATOR_QUEUE_CALLBACK_FORMAT") or "XML"
        if fmt not in ("XML", "JSON"):
            problems.append("CIRELAY_EMULATOR_QUEUE_CALLBACK_FORMAT: XML or JSON")
        data_dir = reader.text("CIRELAY_EMULATOR_DATA_DIR")
        config = cls(
            secret_id=secret_id,
            secret_key=secret_key,
            job_seconds=reader.number("CIRELAY_EMULATOR_JOB_SECONDS", 2.0),
            callback_retry_schedule=reader.schedule("CIRELAY_EMULATOR_CALLBACK_RETRIES"),
            callback_timeout=reader.number("CIRELAY_EMULATOR_CALLBACK_TIMEOUT", 5.0),
            callback_jitter=reader.number("CIRELAY_EMULATOR_CALLBACK_JITTER", 0.1),
            region=reader.text("CIRELAY_EMULATOR_REGION") or None,
            queue_ids=reader.queue_ids("CIRELAY_EMULATOR_QUEUE_IDS"),
            queue_callback_url=reader.text("CIRELAY_EMULATOR_QUEUE_CALLBACK_URL") or None,
            queue_callback_format=fmt,
            fail_marker=reader.text("CIRELAY_EMULATOR_FAIL_MARKER") or "fail",
            faults=reader.faults("CIRELAY_EMULATOR_FAULTS", "CIRELAY_EMULATOR_SEED"),
            data_dir=Path(data_dir) if data_dir else None,
            admin=reader.text("CIRELAY_EMULATOR_ADMIN") not in ("0", "false", "no"),
            schema_dir=Path(schema_dir)
            if (schema_dir := reader.text("CIRELAY_SCHEMA_DIR"))
            else None,
        )
        problems.extend(config.problems())
        if problems:
            raise ConfigError(problems)
        return config

    def problems(self) -> list[str]:
        """What is wrong with this configuration (``[]`` when nothing)."""
        found = []
        if self.job_seconds <= 0:
            found.append("job_seconds: must be > 0")
        if any(s < 0 for s in self.callback_retry_schedule):
            found.append("callback_retry_schedule: delays must be >= 0")
        if self.callback_timeout <= 0:
            found.append("callback_timeout: must be > 0")
        if not 0 <= self.callback_jitter < 1:
            found.append("callback_jitter: must be in [0, 1)")
        if self.callback_workers < 1:
            found.append("callback_workers: must be >= 1")
        found.extend(
            f"queue_ids: {bucket}: not p + 32 hex"
            for bucket, queue in self.queue_ids.items()
            if not _QUEUE_ID.fullmatch(queue)
        )
        return found

    def with_overrides(self, **changes: Any) -> EmulatorConfig:
        return replace(self, **changes)


class _Reader:
    """Typed reads of environment variables, collecting problems instead of raising."""

    def __init__(self, env: Mapping[str, str], problems: list[str]) -> None:
        self.env = env
        self.problems = problems

    def text(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def number(self, name: str, default: float) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError:
            self.problems.append(f"{name}: not a number")
            return default

    def schedule(self, name: str) -> tuple[float, ...]:
        raw = self.text(name)
        if not raw:
            return DEFAULT_RETRY_SCHEDULE
        if raw.lower() == "none":
            return ()
        try:
            return tuple(float(p) for p in raw.split(",") if p.strip())
        except ValueError:
            self.problems.append(f"{name}: comma-separated seconds, e.g. 0.5,1,2,4")
            return DEFAULT_RETRY_SCHEDULE

    def queue_ids(self, name: str) -> dict[str, str]:
        result = {}
        for pair in filter(None, (p.strip() for p in self.text(name).split(","))):
            bucket, sep, queue = pair.partition("=")
            if not sep:
                self.problems.append(f"{name}: bucket=queue pairs, comma-separated")
                continue
            result[bucket.strip()] = queue.strip()
        return result

    def faults(self, name: str, seed_name: str) -> FaultSettings:
        settings = FaultSettings()
        raw = self.text(name)
        try:
            if raw:
                settings = settings.updated(json.loads(raw))
            seed = self.text(seed_name)
            if seed:
                settings = settings.updated({"seed": int(seed)})
        except (ValueError, FaultSettingsError) as exc:
            self.problems.append(f"{name}/{seed_name}: {exc}")
        return settings


def create_emulator_app(
    config: EmulatorConfig,
    *,
    clock: Callable[[], datetime] = utc_now,
    schemas: SchemaSet | None = None,
) -> Flask:
    """The emulator as a Flask app, its background threads running.

    ``clock`` gives the time of job timestamps, signature windows and job progress (a test
    may hold a manual one and call ``emulator_of(app).tick()``). Stop the threads with
    ``emulator_of(app).stop()``.
    """
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    return build_app(config, clock, schemas or SchemaSet.load(config.schema_dir))


def emulator_of(app: Flask) -> Emulator:
    """The running parts of an emulator app (store, faults, notifier; ``tick``, ``stop``)."""
    running: Emulator = app.extensions["ci_emulator"]
    return running


class _Handler(WSGIRequestHandler):
    """werkzeug's handler, announcing itself as CI does, and only once: the app sets
    ``Server: tencent-ci`` too, and ``BaseHTTPRequestHandler`` would add its own."""

    _server_sent = False

    def version_string(self) -> str:
        return "tencent-ci"

    def send_response(self, code: int, message: str | None = None) -> None:
        self._server_sent = False
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "server":
            if self._server_sent:
                return
            self._server_sent = True
        super().send_header(keyword, value)


def _print(line: str) -> None:
    print(line, flush=True)


def serve(
    host: str, port: int, config: EmulatorConfig, announce: Callable[[str], None] | None = None
) -> None:
    """Run the emulator on ``host:port`` until SIGTERM or SIGINT (blocking; threaded).

    Prints ``cirelay emulator listening on http://<host>:<port>`` once bound (``port=0``
    picks a free port: read it from that line), or hands it to ``announce`` (``cirelay
    emulator`` logs it, so that every line is in the log format). On a signal, the HTTP
    server stops taking requests, then the ticker, the job finishers and the notifier stop
    (pending callback retries are dropped; attempts in flight finish within
    ``callback_timeout``).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_emulator_app(config)
    server = make_server(host, port, app, threaded=True, request_handler=_Handler)
    stop = threading.Event()

    def shut_down(signum: int, frame: FrameType | None) -> None:
        # ignore further signals first: a second one while this runs would re-enter it
        # inside stop.set() and deadlock on the event's lock
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not stop.is_set():
            stop.set()
            emulator_of(app).stopping.set()  # wakes requests sleeping in create_timeout
            threading.Thread(target=server.shutdown, name="emulator-shutdown").start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, shut_down)
        signal.signal(signal.SIGINT, shut_down)
    bound = server.server_address[1]
    (announce or _print)(f"cirelay emulator listening on http://{host}:{bound}")
    log.info(
        "CI emulator: job_seconds=%s retries=%s admin=%s data_dir=%s",
        config.job_seconds,
        ",".join(f"{s:g}" for s in config.callback_retry_schedule) or "none",
        config.admin,
        config.data_dir,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        emulator_of(app).stop()
        log.info("cirelay emulator stopped")
