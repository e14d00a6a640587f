"""``cirelay`` command line: serve, up, db upgrade, quarantine list|show|replay."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from app import build_services, store, utc_now
from app.config import ConfigError, Settings
from app.errors import ServiceError
from app.migrations import upgrade


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cirelay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="the local stack in the foreground, dev defaults")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--data-dir", type=Path, default=Path("var"))
    up.add_argument("--workers", type=int, default=2)
    up.set_defaults(func=cmd_up)

    serve = commands.add_parser("serve", help="the service under gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=None)
    serve.set_defaults(func=cmd_serve)

    db = commands.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)

    quarantine = commands.add_parser("quarantine", help="quarantined notifications")
    q_commands = quarantine.add_subparsers(dest="q_command", required=True)
    q_list = q_commands.add_parser("list", help="list quarantined notifications")
    q_list.add_argument("--pending", action="store_true", help="only those not replayed")
    q_list.add_argument("--limit", type=int, default=100)
    q_list.set_defaults(func=cmd_quarantine_list)
    q_show = q_commands.add_parser("show", help="one quarantined notification in full")
    q_show.add_argument("id", type=int)
    q_show.set_defaults(func=cmd_quarantine_show)
    q_replay = q_commands.add_parser("replay", help="send them through ingest again")
    q_replay.add_argument("ids", type=int, nargs="*", help="default: all not yet replayed")
    q_replay.set_defaults(func=cmd_quarantine_replay)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


# --- running the service ------------------------------------------------------------------


def _gunicorn_command(host: str, port: int, workers: int | None) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:app.gunicorn_conf",
        "--bind",
        f"{host}:{port}",
    ]
    if workers:
        command += ["--workers", str(workers)]
    return [*command, "app.wsgi:application"]


def _prepare_metrics_dir(env: dict[str, str]) -> None:
    """prometheus_client multiprocess mode: one directory, emptied at start."""
    directory = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="cirelay-"))
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _migrate_if_sqlite(settings: Settings) -> None:
    if settings.database_url.startswith("sqlite"):
        path = settings.database_url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        upgrade(store.create_engine(settings.database_url))


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    _migrate_if_sqlite(settings)
    env = dict(os.environ)
    _prepare_metrics_dir(env)
    command = _gunicorn_command(args.host, args.port, args.workers)
    os.execve(sys.executable, command, env)  # noqa: S606 - replaces this process by gunicorn


def cmd_up(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.resolve()
    settings = Settings.dev(data_dir)
    _migrate_if_sqlite(settings)
    env = dict(os.environ)
    env.update(
        CIRELAY_DATABASE_URL=settings.database_url,
        CIRELAY_API_KEYS=",".join(settings.api_keys),
        CIRELAY_CALLBACK_KEYS=",".join(settings.callback_keys),
        CIRELAY_QUEUE_CALLBACK_SECRET=settings.queue_callback_secret,
        CIRELAY_PUBLIC_URL=os.environ.get("CIRELAY_PUBLIC_URL", f"http://{args.host}:{args.port}"),
        PROMETHEUS_MULTIPROC_DIR=str(data_dir / "prometheus"),
    )
    _prepare_metrics_dir(env)
    base = f"http://{args.host}:{args.port}"
    print(
        f"cirelay up\n"
        f"  service     {base}   (metrics {base}/metrics, health {base}/readyz)\n"
        f"  database    {settings.database_url}\n"
        f"  API key     {settings.api_keys[0]}\n"
        f"  queue URL   {base}/callbacks/ci/queue/{settings.queue_callback_secret}\n"
        f"  Ctrl-C stops everything.",
        flush=True,
    )
    command = _gunicorn_command(args.host, args.port, args.workers)
    process = subprocess.Popen(command, env=env)  # noqa: S603 - our own fixed command
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    upgrade(store.create_engine(settings.database_url))
    print("database is at the latest revision")
    return 0


# --- quarantine ---------------------------------------------------------------------------


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    engine = store.create_engine(Settings.from_env().database_url)
    with engine.connect() as conn:
        items = store.list_quarantined(conn, pending_only=args.pending, limit=args.limit)
    print(f"{'ID':>6}  {'RECEIVED':20}  {'SOURCE':8}  {'ERROR':16}  {'REPLAYED':16}  FIRST REASON")
    for item in items:
        first = item.reasons[0] if item.reasons else {}
        reason = f"{first.get('path', '')} {first.get('reason', '')}".strip()
        print(
            f"{item.id:>6}  {item.received_at:%Y-%m-%d %H:%M:%S}  {item.source:8}  "
            f"{item.error:16}  {item.replay_outcome or '-':16}  {reason[:80]}"
        )
    return 0


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    engine = store.create_engine(Settings.from_env().database_url)
    with engine.connect() as conn:
        item = store.get_quarantined(conn, args.id)
    if item is None:
        print(f"no quarantined notification {args.id}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "id": item.id,
                "received_at": item.received_at.isoformat(),
                "source": item.source,
                "job_id": item.job_id,
                "content_type": item.content_type,
                "error": item.error,
                "reasons": item.reasons,
                "headers": item.headers,
                "replayed_at": item.replayed_at.isoformat() if item.replayed_at else None,
                "replay_outcome": item.replay_outcome,
            },
            indent=2,
        )
    )
    print("--- body ---")
    print(item.body.decode("utf-8", errors="replace"))
    return 0


def cmd_quarantine_replay(args: argparse.Namespace) -> int:
    services = build_services(Settings.from_env())
    ids = args.ids
    if not ids:
        with services.engine.connect() as conn:
            ids = [q.id for q in store.list_quarantined(conn, pending_only=True, limit=100_000)]
    failures = 0
    for ident in ids:
        try:
            outcome = services.receiver.replay(ident, utc_now())
        except ServiceError as exc:
            outcome = exc.code
        ok = outcome in ("accepted", "duplicate", "stale")
        failures += not ok
        print(f"{ident:>6}  {outcome}")
    print(f"replayed {len(ids)}, {len(ids) - failures} recorded, {failures} still invalid")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
