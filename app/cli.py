"""The ``cirelay`` command line: every command reads ``var/dev-secrets`` when the environment
sets nothing (:func:`app.config.command_environ`), asks only for the settings it uses, and
answers a network, database or port fault with one line (:func:`app.processes.failure_message`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app import build_services, logs, store
from app.admin_cli import (
    cmd_quarantine_list,
    cmd_quarantine_replay,
    cmd_quarantine_show,
    cmd_subscriptions_list,
    cmd_subscriptions_replay,
    command_settings,
)
from app.config import ConfigError, Settings, command_environ
from app.migrations import upgrade
from app.models import JobState


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, unless the help says it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cirelay",
        description="cirelay: receives Tencent Cloud CI job notifications. Each command's"
        " --help lists its options and their defaults.",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands")  # fmt: skip

    def command(parent: Any, name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, formatter_class=_Formatter
        )
        return sub

    up = command(commands, "up", "the local stack in the foreground: CI emulator, worker and"
                 " service, on SQLite under --data-dir, with generated dev secrets")  # fmt: skip
    up.add_argument("--host", default="127.0.0.1", help="address of the service and emulator")
    up.add_argument("--port", type=int, default=8080, help="the service's port")
    up.add_argument("--emulator-port", type=int, default=8081, help="the CI emulator's port")
    up.add_argument("--data-dir", type=Path, default=Path("var"),
                    help="database, dev-secrets, the emulator's buckets")  # fmt: skip
    up.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    up.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("CIRELAY_LOG_FORMAT") or "text",
        help="text: readable lines for a terminal; json: one JSON object per line (what"
        " serve and worker write by default); default CIRELAY_LOG_FORMAT, else %(default)s",
    )
    up.set_defaults(func=cmd_up)

    emulator = command(commands, "emulator", "the local CI emulator alone")
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=int, default=8081, help="port to listen on")
    emulator.set_defaults(func=cmd_emulator)

    worker = command(commands, "worker", "webhook delivery and the reconciler")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("CIRELAY_WORKER_METRICS_PORT") or 0),
        help="serve this worker's /metrics on the port (default CIRELAY_WORKER_METRICS_PORT,"
        " else %(default)s: off)",
    )
    worker.add_argument("--ready-fd", type=int, help="write one byte to this file descriptor"
                        " once running (cirelay up waits for it); default: none")  # fmt: skip
    worker.set_defaults(func=cmd_worker)

    submit = command(commands, "submit", "submit a VoiceSeparate job (POST /v1/jobs)")
    submit.add_argument("object", help="input object key, e.g. songs/a.wav")
    submit.add_argument("--url", default=os.environ.get("CIRELAY_URL", "http://127.0.0.1:8080"),
                        help="the service (default CIRELAY_URL, else %(default)s)")  # fmt: skip
    submit.add_argument(
        "--api-key",
        default=os.environ.get("CIRELAY_API_KEY"),
        help="default: CIRELAY_API_KEY, else the dev key in var/dev-secrets",
    )
    submit.add_argument("--bucket", help="input bucket (default: CIRELAY_CI_BUCKET at the service)")
    submit.add_argument("--region", help="input region (default: CIRELAY_CI_REGION at the service)")
    submit.add_argument("--template-id", help="a CI template instead of the options below;"
                        " default: none")  # fmt: skip
    submit.add_argument("--audio-mode", default="AudioAndBackground", help="VoiceSeparate mode")
    submit.add_argument("--codec", default="mp3", help="output codec")
    submit.add_argument("--samplerate", default="44100", help="output sample rate, Hz")
    submit.add_argument("--bitrate", default="128", help="output bit rate, kbit/s")
    submit.add_argument("--channels", default="2", help="output channels")
    submit.add_argument("--output-bucket", help="default: --bucket, else CIRELAY_CI_BUCKET,"
                        " else the dev bucket")  # fmt: skip
    submit.add_argument("--output-region", help="default: --region, else CIRELAY_CI_REGION,"
                        " else the dev region")  # fmt: skip
    submit.add_argument("--output-object", default="stems/${jobid}/background.${ext}",
                        help="key of the background track")  # fmt: skip
    submit.add_argument("--au-object", default="stems/${jobid}/vocals.${ext}",
                        help="key of the vocal track")  # fmt: skip
    submit.add_argument("--user-data", help="CI's UserData, echoed back; default: none")
    submit.add_argument("--job-level", choices=["0", "1", "2"],
                        help="CI's JobLevel (priority); default: CI's, 0")  # fmt: skip
    submit.add_argument("--callback-format", choices=["XML", "JSON"],
                        help="how CI sends the notification; default: XML")  # fmt: skip
    submit.add_argument("--idempotency-key", help="a retry with the same key and body gets"
                        " the same job; default: none")  # fmt: skip
    submit.add_argument("--wait", action="store_true", help="poll until the job finishes and"
                        " print it; default: print the submitted job and return")  # fmt: skip
    submit.set_defaults(func=cmd_submit)

    serve = command(commands, "serve", "the service under gunicorn")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, help="gunicorn worker processes (default:"
                       " CIRELAY_WORKERS, else one per CPU)")  # fmt: skip
    serve.add_argument("--check", action="store_true", help="only check settings; default: serve")
    serve.set_defaults(func=cmd_serve)

    db = command(commands, "db", "database migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND",
                                    title="commands")  # fmt: skip
    command(db_commands, "upgrade", "apply migrations to CIRELAY_DATABASE_URL").set_defaults(
        func=cmd_db_upgrade
    )

    quarantine = command(commands, "quarantine", "quarantined notifications")
    q_commands = quarantine.add_subparsers(dest="q_command", required=True, metavar="COMMAND",
                                           title="commands")  # fmt: skip
    q_list = command(q_commands, "list", "list quarantined notifications")
    q_list.add_argument("--pending", action="store_true",
                        help="only those not replayed; default: all")  # fmt: skip
    q_list.add_argument("--limit", type=int, default=100, help="at most this many")
    q_list.set_defaults(func=cmd_quarantine_list)
    q_show = command(q_commands, "show", "one quarantined notification in full")
    q_show.add_argument("id", type=int, help="its ID, as list shows it")
    q_show.set_defaults(func=cmd_quarantine_show)
    q_replay = command(q_commands, "replay", "send them through ingest again")
    q_replay.add_argument("ids", type=int, nargs="*", help="default: all not yet replayed")
    q_replay.set_defaults(func=cmd_quarantine_replay)

    subs = command(commands, "subscriptions", "webhook subscriptions")
    s_commands = subs.add_subparsers(dest="s_command", required=True, metavar="COMMAND",
                                     title="commands")  # fmt: skip
    command(s_commands, "list", "list subscriptions").set_defaults(func=cmd_subscriptions_list)
    s_replay = command(
        s_commands, "replay", "deliver events again (one, or all since a time), with a progress bar"
    )
    s_replay.add_argument("id", help="the subscription id")
    which = s_replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", help="one event id; default: none (give --event or --since)")
    which.add_argument("--since", help="every matching event since, e.g. 2026-11-25T08:00:00Z;"
                       " default: none (give --event or --since)")  # fmt: skip
    s_replay.add_argument("--no-wait", action="store_true",
                          help="enqueue and return, the worker delivers; default: follow the"
                          " deliveries")  # fmt: skip
    s_replay.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow")
    s_replay.set_defaults(func=cmd_subscriptions_replay)

    routes = command(
        commands, "routes", "every HTTP route: the API's and CI's callbacks (needs no settings)"
    )
    routes.set_defaults(func=cmd_routes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = " ".join(
        part for part in (args.command, getattr(args, "db_command", None),
                          getattr(args, "q_command", None), getattr(args, "s_command", None))
        if part
    )  # fmt: skip
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cirelay {name}: stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # a network or database fault: one line, never a traceback
        from app.processes import failure_message

        message = failure_message(exc)
        if message is None:
            raise
        print(f"cirelay {name}: {message}", file=sys.stderr)
        return 1


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
    return command  # the application: app.serving.gunicorn_conf's wsgi_app


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


_settings = command_settings


def cmd_serve(args: argparse.Namespace) -> int:
    from app.processes import refuse_taken_ports

    if args.check:  # a ConfigError: exit 2 with every problem (main)
        Settings.from_env(command_environ())
        print("configuration complete")
        return 0
    if refused := refuse_taken_ports("serve", args.host, {"--port": args.port}):
        return refused
    environ = command_environ()
    settings = Settings.from_env(environ)
    _migrate_if_sqlite(settings)
    env = dict(environ)
    _prepare_metrics_dir(env)
    command = _gunicorn_command(args.host, args.port, args.workers)
    os.execve(sys.executable, command, env)  # noqa: S606 - replaces this process by gunicorn


def cmd_up(args: argparse.Namespace) -> int:
    """Emulator and worker, then the service (each a process of its own, in this process
    group); the banner once all three are ready (:class:`app.processes.Stack`)."""
    from app import processes as p

    ports = {"--port": args.port, "--emulator-port": args.emulator_port}
    if refused := p.refuse_taken_ports("up", args.host, ports):
        return refused  # before anything touches the database or the data directory
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
        "CIRELAY_LOG_FORMAT": args.log_format,
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
    banner = (
        f"cirelay up: ready\n"
        f"  service     {base}   (metrics {base}/metrics, health {base}/readyz)\n"
        f"  emulator    {settings.ci_endpoint}   (CI, bucket {settings.ci_bucket};"
        f" WAV files in {data_dir / 'buckets' / settings.ci_bucket} are really split)\n"
        f"  worker      reconciles jobs silent for {settings.reconcile_after_seconds}s\n"
        f"  database    {settings.database_url}\n"
        f"  console     {base}/console/   (sign in with the API key)\n"
        f"  API key     {settings.admin_api_key}\n"
        f"  queue URL   {base}/callbacks/ci/queue/{settings.queue_callback_secret}\n"
        f"  logs        {args.log_format} (--log-format)\n"
        f"  Ctrl-C stops everything."
    )
    me = [sys.executable, "-m", "app.cli"]
    emulator = p.Child("emulator", [*me, "emulator", "--host", args.host, "--port",
                                    str(args.emulator_port)],
                       p.port_answers(args.host, args.emulator_port))  # fmt: skip
    worker = p.Child("worker", [*me, "worker"], p.wrote_ready_byte, has_ready_fd=True)
    service = p.Child("service", _gunicorn_command(args.host, args.port, args.workers),
                      p.url_answers_200(f"{base}/readyz"))  # fmt: skip
    print(f"cirelay up: starting the emulator and the worker, then the service on {base}",
          flush=True)  # fmt: skip
    return p.Stack(env, lambda line: print(line, flush=True)).run(
        [[emulator, worker], [service]], banner
    )


def cmd_emulator(args: argparse.Namespace) -> int:
    from app.emulator import EmulatorConfig, serve
    from app.processes import refuse_taken_ports

    if refused := refuse_taken_ports("emulator", args.host, {"--port": args.port}):
        return refused
    environ = command_environ()
    logs.configure(environ.get("CIRELAY_LOG_LEVEL", "info"),
                   environ.get("CIRELAY_LOG_FORMAT", "json"))  # fmt: skip
    serve(
        args.host,
        args.port,
        EmulatorConfig.from_env(environ),
        announce=logging.getLogger("app.emulator").info,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from app import worker
    from app.delivery import build_senders

    environ = command_environ()
    logs.configure(environ.get("CIRELAY_LOG_LEVEL", "info"),
                   environ.get("CIRELAY_LOG_FORMAT", "json"))  # fmt: skip
    if args.metrics_port and environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # its files would land in a directory the service also exposes: counted twice
        print("cirelay worker: --metrics-port needs PROMETHEUS_MULTIPROC_DIR unset",
              file=sys.stderr)  # fmt: skip
        return 2
    # the submitter (resubmitting jobs left Submitting) signs callback URLs; no API key
    services = build_services(Settings.from_env(environ, requires=("CIRELAY_CALLBACK_KEYS",)))
    transports = build_senders(services.settings)
    if args.metrics_port:
        worker.serve_metrics(services, args.metrics_port, transports)
    if args.ready_fd is not None:
        os.write(args.ready_fd, b"1")
        os.close(args.ready_fd)
    worker.run(services, transports)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    import requests

    key = args.api_key or _settings().admin_api_key
    if not key:
        print("cirelay submit: no API key: pass --api-key or set CIRELAY_API_KEY (after"
              " make run, var/dev-secrets holds one)", file=sys.stderr)  # fmt: skip
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
    _print_answer(response)
    if response.status_code != 201 or not args.wait:
        return 0 if response.status_code == 201 else 1
    job_id = response.json()["id"]
    while True:
        time.sleep(1)
        answer = requests.get(f"{args.url}/v1/jobs/{job_id}", headers=headers, timeout=30)
        if answer.status_code != 200:
            _print_answer(answer)
            return 1
        state = answer.json()
        print(f"{job_id}: {state['state']}", file=sys.stderr, flush=True)
        if JobState(state["state"]).is_terminal:
            print(json.dumps(state, indent=2))  # the final job, as GET /v1/jobs/<id> has it
            return 0 if state["state"] == JobState.SUCCESS else 1


def _print_answer(response: Any) -> None:
    """The service's JSON answer, pretty; anything else (a proxy's page) as it came."""
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(f"HTTP {response.status_code}: {response.text[:500]}")


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


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
    settings = _settings()
    # a migration may build an index for minutes: no statement timeout
    no_limit = store.DatabaseTimeouts(statement=None)
    upgrade(store.create_engine(settings.database_url, timeouts=no_limit))
    print("database is at the latest revision")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
