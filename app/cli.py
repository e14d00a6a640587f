"""``cirelay`` command line: up, serve, emulator, worker, submit, db upgrade, quarantine."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import build_services, logs, store, utc_now
from app.config import ConfigError, Settings
from app.errors import ServiceError
from app.migrations import upgrade
from app.models import JobState


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cirelay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="the local stack in the foreground, dev defaults")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--emulator-port", type=int, default=8081)
    up.add_argument("--data-dir", type=Path, default=Path("var"))
    up.add_argument("--workers", type=int, default=2)
    up.set_defaults(func=cmd_up)

    emulator = commands.add_parser("emulator", help="the local CI emulator alone")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8081)
    emulator.set_defaults(func=cmd_emulator)

    worker = commands.add_parser("worker", help="webhook delivery and the reconciler")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("CIRELAY_WORKER_METRICS_PORT") or 0),
        help="serve this worker's /metrics on the port (default CIRELAY_WORKER_METRICS_PORT;"
        " 0: off)",
    )
    worker.set_defaults(func=cmd_worker)

    submit = commands.add_parser("submit", help="submit a VoiceSeparate job (POST /v1/jobs)")
    submit.add_argument("object", help="input object key, e.g. songs/a.wav")
    submit.add_argument("--url", default=os.environ.get("CIRELAY_URL", "http://127.0.0.1:8080"))
    submit.add_argument(
        "--api-key",
        default=os.environ.get("CIRELAY_API_KEY"),
        help="default: CIRELAY_API_KEY, else the dev key in var/dev-secrets",
    )
    submit.add_argument("--bucket")
    submit.add_argument("--region")
    submit.add_argument("--template-id")
    submit.add_argument("--audio-mode", default="AudioAndBackground")
    submit.add_argument("--codec", default="mp3")
    submit.add_argument("--samplerate", default="44100")
    submit.add_argument("--bitrate", default="128")
    submit.add_argument("--channels", default="2")
    submit.add_argument("--output-bucket")
    submit.add_argument("--output-region")
    submit.add_argument("--output-object", default="stems/${jobid}/background.${ext}")
    submit.add_argument("--au-object", default="stems/${jobid}/vocals.${ext}")
    submit.add_argument("--user-data")
    submit.add_argument("--job-level", choices=["0", "1", "2"])
    submit.add_argument("--callback-format", choices=["XML", "JSON"])
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="poll until the job finishes")
    submit.set_defaults(func=cmd_submit)

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

    subs = commands.add_parser("subscriptions", help="webhook subscriptions")
    s_commands = subs.add_subparsers(dest="s_command", required=True)
    s_commands.add_parser("list", help="list subscriptions").set_defaults(
        func=cmd_subscriptions_list
    )
    s_replay = s_commands.add_parser(
        "replay", help="deliver events again (one, or all since a time), with a progress bar"
    )
    s_replay.add_argument("id", help="the subscription id")
    which = s_replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", help="one event id")
    which.add_argument("--since", help="every matching event since, e.g. 2026-11-25T08:00:00Z")
    s_replay.add_argument(
        "--no-wait", action="store_true", help="enqueue and return; the worker delivers"
    )
    s_replay.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    s_replay.set_defaults(func=cmd_subscriptions_replay)

    routes = commands.add_parser(
        "routes", help="every HTTP route: the API's and CI's callbacks (needs no settings)"
    )
    routes.set_defaults(func=cmd_routes)

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
        "python:app.serving.gunicorn_conf",
        "--bind",
        f"{host}:{port}",
    ]
    if workers:
        command += ["--workers", str(workers)]
    return [*command, "app.wsgi:application"]


def _prepare_metrics_dir(env: dict[str, str]) -> None:
    """prometheus_client multiprocess mode: one directory, emptied at start (its files, not
    the directory: it may be a mount point). Refuses a directory that is obviously not one
    of its own, such as ``/``, ``.`` or a home directory."""
    given = env.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(given or tempfile.mkdtemp(prefix="cirelay-")).resolve()
    if given and directory in {Path("/"), Path.cwd(), Path.home(), *Path.cwd().parents}:
        raise ConfigError([f"PROMETHEUS_MULTIPROC_DIR={given}: not a directory to empty"])
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
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
    """Emulator, service and worker, each a process of its own, in one process group."""
    data_dir = args.data_dir.resolve()
    base = f"http://{args.host}:{args.port}"
    environ = dict(os.environ)
    environ.setdefault("CIRELAY_CI_ENDPOINT", f"http://{args.host}:{args.emulator_port}")
    environ.setdefault("CIRELAY_PUBLIC_URL", base)
    settings = Settings.dev(data_dir, environ)
    _migrate_if_sqlite(settings)
    env = {
        **environ,
        "CIRELAY_DATABASE_URL": settings.database_url,
        "CIRELAY_API_KEYS": ",".join(settings.api_keys),
        "CIRELAY_CALLBACK_KEYS": ",".join(settings.callback_keys),
        "CIRELAY_QUEUE_CALLBACK_SECRET": ",".join(settings.queue_callback_secrets),
        "CIRELAY_CI_SECRET_ID": settings.ci_secret_id,
        "CIRELAY_CI_SECRET_KEY": settings.ci_secret_key,
        "CIRELAY_CI_BUCKET": settings.ci_bucket,
        "CIRELAY_CI_REGION": settings.ci_region,
        "CIRELAY_CI_ENDPOINT": settings.ci_endpoint or "",
        "CIRELAY_PUBLIC_URL": settings.public_url,
        "CIRELAY_RECONCILE_AFTER_SECONDS": str(settings.reconcile_after_seconds),
        "CIRELAY_RECONCILE_INTERVAL_SECONDS": str(settings.reconcile_interval_seconds),
        "CIRELAY_DELIVERY_ALLOWED_NETWORKS": ",".join(settings.delivery_allowed_networks),
        "CIRELAY_LOG_FORMAT": environ.get("CIRELAY_LOG_FORMAT", "text"),
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "prometheus"),
    }
    # jobs that name no CallBack notify the queue URL, as a CI queue's NotifyConfig would;
    # WAV files under <data-dir>/buckets/<bucket>/ are really split by the emulator
    env.setdefault(
        "CIRELAY_EMULATOR_QUEUE_CALLBACK_URL",
        f"{base}/callbacks/ci/queue/{settings.queue_callback_secret}",
    )
    env.setdefault("CIRELAY_EMULATOR_DATA_DIR", str(data_dir / "buckets"))
    (data_dir / "buckets" / settings.ci_bucket).mkdir(parents=True, exist_ok=True)
    _prepare_metrics_dir(env)
    print(
        f"cirelay up\n"
        f"  service     {base}   (metrics {base}/metrics, health {base}/readyz)\n"
        f"  emulator    {settings.ci_endpoint}   (CI, bucket {settings.ci_bucket};"
        f" WAV files in {data_dir / 'buckets' / settings.ci_bucket} are really split)\n"
        f"  worker      reconciles jobs silent for {settings.reconcile_after_seconds}s\n"
        f"  database    {settings.database_url}\n"
        f"  API key     {settings.admin_api_key}\n"
        f"  queue URL   {base}/callbacks/ci/queue/{settings.queue_callback_secret}\n"
        f"  Ctrl-C stops everything.",
        flush=True,
    )
    me = [sys.executable, "-m", "app.cli"]
    commands = [
        [*me, "emulator", "--host", args.host, "--port", str(args.emulator_port)],
        _gunicorn_command(args.host, args.port, args.workers),
        [*me, "worker"],
    ]
    processes = [subprocess.Popen(c, env=env) for c in commands]  # noqa: S603 - our own
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print("cirelay up: a process exited; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from app.emulator import EmulatorConfig, serve

    serve(args.host, args.port, EmulatorConfig.from_env())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app import worker

    logs.configure(os.environ.get("CIRELAY_LOG_LEVEL", "info"),
                   os.environ.get("CIRELAY_LOG_FORMAT", "json"))  # fmt: skip
    if args.metrics_port and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # its files would land in a directory the service also exposes: counted twice
        print("cirelay worker: --metrics-port needs PROMETHEUS_MULTIPROC_DIR unset",
              file=sys.stderr)  # fmt: skip
        return 2
    services = build_services(Settings.from_env())
    if args.metrics_port:
        worker.serve_metrics(services, args.metrics_port)
    worker.run(services)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import requests

    key = args.api_key or _dev_secret("CIRELAY_API_KEYS")
    if not key:
        print("no API key: pass --api-key or set CIRELAY_API_KEY", file=sys.stderr)
        return 2
    job: dict[str, object] = {
        "input": {"object": args.object, "bucket": args.bucket, "region": args.region},
        "output": {
            "bucket": args.output_bucket
            or args.bucket
            or os.environ.get("CIRELAY_CI_BUCKET")
            or _dev_default("CIRELAY_CI_BUCKET"),
            "region": args.output_region
            or args.region
            or os.environ.get("CIRELAY_CI_REGION")
            or _dev_default("CIRELAY_CI_REGION"),
            "object": args.output_object,
            "au_object": args.au_object,
        },
        "user_data": args.user_data,
        "job_level": args.job_level,
        "callback_format": args.callback_format,
    }
    if args.template_id:
        job["template_id"] = args.template_id
    else:
        job["voice_separate"] = {
            "audio_mode": args.audio_mode,
            "audio_config": {"codec": args.codec, "samplerate": args.samplerate,
                             "bitrate": args.bitrate, "channels": args.channels},
        }  # fmt: skip
    job = _without_none(job)
    headers = {"Authorization": f"Bearer {key}"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    response = requests.post(f"{args.url}/v1/jobs", json=job, headers=headers, timeout=30)
    print(json.dumps(response.json(), indent=2))
    if response.status_code != 201 or not args.wait:
        return 0 if response.status_code == 201 else 1
    job_id = response.json()["id"]
    while True:
        time.sleep(1)
        state = requests.get(f"{args.url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        print(f"{job_id}: {state['state']}", flush=True)
        if JobState(state["state"]).is_terminal:
            return 0 if state["state"] == JobState.SUCCESS else 1


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _dev_secret(name: str) -> str | None:
    path = Path("var") / "dev-secrets"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return value.split(",")[0]
    return None


def _dev_default(name: str) -> str:
    from app.config import DEV_DEFAULTS

    return DEV_DEFAULTS[name]


def cmd_routes(args: argparse.Namespace) -> int:
    """Like ``flask routes``, without settings or a database: the URL map the web layer
    builds, which lists the callback lane's routes too."""
    from flask import Flask

    from app import web

    app = Flask("app")
    web.init_app(app)
    rows = [
        (rule.rule, ",".join(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})), rule.endpoint)
        for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule)
        if rule.endpoint != "static"
    ]
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for path, methods, endpoint in rows:
        print(f"{path:<{width[0]}}  {methods:<{width[1]}}  {endpoint}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    # a migration may build an index for minutes: no statement timeout
    no_limit = store.DatabaseTimeouts(statement=None)
    upgrade(store.create_engine(settings.database_url, timeouts=no_limit))
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


def cmd_subscriptions_list(args: argparse.Namespace) -> int:
    services = build_services(Settings.from_env())
    with services.engine.connect() as conn:
        items = store.list_subscriptions(conn)
    for item in items:
        state = "enabled" if item.enabled else f"disabled ({item.disabled_reason or 'by hand'})"
        print(f"{item.id}  {state:<10}  {','.join(item.event_types):<24}  {item.url}")
    return 0


def cmd_subscriptions_replay(args: argparse.Namespace) -> int:
    """Enqueue a replay, then follow its deliveries (done by ``cirelay worker``) on a bar."""
    from tqdm import tqdm

    from app import delivery

    services = build_services(Settings.from_env())
    try:
        since = delivery.parse_since(args.since) if args.since else None
    except ServiceError:
        print("--since: an RFC 3339 time with offset, e.g. 2026-11-25T08:00:00Z",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        replay = delivery.start_replay(
            services.engine, args.id, now=utc_now(), event_id=args.event, since=since
        )
    except ServiceError as exc:
        print(f"{exc.code}: {exc}", file=sys.stderr)
        return 1
    print(f"replay {replay.id}: {replay.deliveries} deliveries to {replay.subscription_id}")
    if args.no_wait or not replay.deliveries:
        return 0
    deadline = time.monotonic() + args.timeout
    with tqdm(total=replay.deliveries, unit="event", desc="delivered") as bar:
        while True:
            counts = delivery.replay_progress(services.engine, replay)
            finished = counts.get("succeeded", 0) + counts.get("failed", 0)
            bar.update(finished - bar.n)
            bar.set_postfix(failed=counts.get("failed", 0), refresh=False)
            if finished >= replay.deliveries or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    failed = counts.get("failed", 0)
    pending = replay.deliveries - finished
    print(f"delivered {counts.get('succeeded', 0)}, failed {failed}, still pending {pending}")
    return 1 if failed or pending else 0


if __name__ == "__main__":
    raise SystemExit(main())
