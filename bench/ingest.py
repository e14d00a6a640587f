"""Ingest benchmark (not a test): cirelay, a bare Flask app and two floors, same gunicorn and load.

1. a fresh database migrated to head (a SQLite file in the temporary directory unless
   ``--database-url``; on PostgreSQL cirelay's tables are dropped first); for ``--endpoint
   job`` ``--jobs`` distinct jobs in state Submitted, each with its own signed callback path,
   written to a file for wrk and split into one slice per cirelay run (warm-up, each round),
   so no job is notified twice (``--endpoint queue``: fresh JobIds on the queue URL);
2. every server started at once on a free 127.0.0.1 port, each under gunicorn with
   ``app.serving.gunicorn_conf`` and the same settings: ``cirelay serve``; "bare", the
   baseline (``bench/bare_app.py``: reads the body, answers 200; ``--baseline`` names
   another); and, unless ``--no-floor``, the floors of ``bench/floor_app.py``: "floor" (parse,
   XSD, one row per notification, group commit) and, unless ``--no-transaction-floor``,
   "floor-tx" (the same with issue 2 section 4's transaction);
3. 2 s of warm-up for each, then ``--rounds`` rounds in which every server in turn gets
   ``--duration`` seconds of the same wrk load (``bench/notify.lua``: every request a
   different job's VoiceSeparate Success notification). Only the server under load uses CPU,
   and short slices taken in turn let the VM's drift hit every server alike;
4. durability: cirelay stopped (SIGTERM, graceful) and its database read back: every 2xx has
   its accepted notification and its job in Success, nothing is committed twice, stale or
   quarantined, and nothing beyond the requests wrk's deadline left in flight; then each
   floor stopped and its rows counted against its 2xx answers (reported);
5. a table over all rounds: per server requests/s, p50/p90/p99 (median of the rounds), max,
   non-2xx, the server's and PostgreSQL's CPU per request and the share of the CPUs other
   processes took; then cirelay/bare over all rounds and per round, against the database's
   target (0.5 on SQLite, 0.35 on PostgreSQL), floor/bare and floor-tx/bare likewise, and
   cirelay/floor-tx (what cirelay reaches of the least its transaction costs).

Run with the project's venv: ``.venv/bin/python bench/ingest.py`` (``make bench``).
Exit status: 0 when cirelay answered every request 2xx and every one is durably committed,
1 otherwise, or when a server fails to start or the baseline or a floor answers anything but
2xx; 130 when interrupted. The ratios are reported, never asserted; so are the floors' rows.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LUA = REPO / "bench" / "notify.lua"
NOTIFICATION = REPO / "tests" / "corpus" / "notification" / "valid" / "success-alphabetical.xml"
HOST = "127.0.0.1"
WRK_THREADS = 2
WARMUP_SECONDS = 2
#: requests/s assumed when sizing the job pool: well above what either server reaches here
ESTIMATED_RATE = 4000
#: the ratio cirelay/bare each database is asked to reach (issue 2 §8, issue 5 §6)
TARGET_RATIO = {"sqlite": 0.5, "postgresql": 0.35}
#: the floor: the least any receiver that validates and durably commits must do
FLOOR_APP = "bench.floor_app:minimal_application"
#: the floor of issue 2 section 4: the same, with the job's new state and an event in the
#: notification's transaction (on PostgreSQL also the least a fleet needs: see floor_app.py)
TRANSACTION_FLOOR_APP = "bench.floor_app:transaction_application"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the benchmark like Ctrl-C: the finally blocks stop the servers.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="cirelay-bench-"))
    try:
        return run(args, work)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    parser.add_argument(
        "--duration", type=int, default=3, help="seconds measured per server and round"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="measured rounds; each round loads every server in turn (default 10)",
    )
    # the service's own defaults (app.serving.gunicorn_conf: it reads the CIRELAY_* variables)
    from app.serving import gunicorn_conf

    parser.add_argument(
        "--workers",
        type=int,
        default=gunicorn_conf.workers,
        help=f"gunicorn workers, both servers (default {gunicorn_conf.workers})",
    )
    parser.add_argument(
        "--worker-class",
        default=gunicorn_conf.worker_class,
        help=f"gunicorn worker class, both servers (default {gunicorn_conf.worker_class})",
    )
    from app.config import Settings

    parser.add_argument(
        "--threads",
        type=int,
        default=Settings.threads,
        help="threads per worker running the application (CIRELAY_THREADS), both servers "
        f"(default {Settings.threads})",
    )
    parser.add_argument(
        "--database-url",
        help="default: a fresh SQLite file in a temporary directory; a PostgreSQL URL is "
        "emptied first (cirelay's tables dropped and migrated again)",
    )
    parser.add_argument("--endpoint", choices=("job", "queue"), default="job")
    parser.add_argument(
        "--baseline",
        default="bench.bare_app:application",
        help="the WSGI app cirelay is compared with (default: the bare app); "
        "bench.floor_app:application with FLOOR_MODE=parse|commit measures floors",
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help=f"skip the floors: {FLOOR_APP} (raw WSGI, libxml2 parse and XSD, one row per "
        f"notification, group commit) and {TRANSACTION_FLOOR_APP} (the same with the job's "
        "state and an event in the notification's transaction)",
    )
    parser.add_argument(
        "--no-transaction-floor",
        dest="transaction_floor",
        action="store_false",
        help=f"skip {TRANSACTION_FLOOR_APP} only",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"distinct jobs prepared (default {ESTIMATED_RATE}/s x (warm-up + rounds x duration))",
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also load 'cirelay-ref', cirelay served from this source tree (e.g. `git archive"
        " <commit>` unpacked) on a SQLite database of its own holding the same jobs: an A/B of"
        " two versions in one run (SQLite and --endpoint job only)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print wrk's own output")
    args = parser.parse_args(argv)
    if args.connections < WRK_THREADS:
        parser.error(f"--connections must be at least {WRK_THREADS} (wrk threads)")
    if args.compare_tree and (args.database_url or args.endpoint != "job"):
        parser.error("--compare-tree: SQLite and --endpoint job only")
    if args.jobs is None:
        args.jobs = ESTIMATED_RATE * (WARMUP_SECONDS + args.rounds * args.duration)
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --- the run ------------------------------------------------------------------------------


@dataclass
class WrkResult:
    label: str
    responses: int = 0
    ok: int = 0
    non2xx: int = 0
    duration_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    exhausted: int = 0
    statuses: str = ""
    outcomes: str = ""
    generated: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    cpu: CpuUse | None = None

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def server_cpu_ms_per_request(self) -> float:
        return self.cpu.server * 1e3 / self.responses if self.cpu and self.responses else 0.0

    @property
    def database_cpu_ms_per_request(self) -> float:
        return self.cpu.database * 1e3 / self.responses if self.cpu and self.responses else 0.0


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds: the server's process group, wrk (and our other children), the local
    PostgreSQL server's processes (part of the load when the benchmark runs on it), the
    machine."""

    server: float
    children: float
    machine: float
    database: float = 0.0
    #: in a snapshot: CPU seconds so far of each PostgreSQL process, by pid
    database_processes: dict[int, float] = field(default_factory=dict, compare=False)

    def __sub__(self, other: CpuUse) -> CpuUse:
        # PostgreSQL's processes come and go (autovacuum workers, backends): what each used
        # meanwhile, not the difference of the sums, in which one that exited would count
        # everything it ever used against the run
        before = other.database_processes
        database = sum(
            seconds - before.get(pid, 0.0) for pid, seconds in self.database_processes.items()
        )
        return CpuUse(
            self.server - other.server,
            self.children - other.children,
            self.machine - other.machine,
            database,
        )

    @property
    def others(self) -> float:
        """What processes outside the benchmark used meanwhile: noise in the figures."""
        return max(self.machine - self.server - self.children - self.database, 0.0)


def cpu_snapshot(server_pid: int) -> CpuUse:
    """CPU used so far by the server's process group (live processes, and workers its master
    has reaped), by this script's reaped children (wrk), by PostgreSQL's processes and by the
    whole machine."""
    tick = os.sysconf("SC_CLK_TCK")
    server = 0
    database: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, _, rest = stat.read_text().partition(" (")[2].rpartition(")")
        except OSError:
            continue
        fields = rest.split()
        if name == "postgres":  # the server and its backends (all of them: ours only load it)
            database[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick
            continue
        if int(fields[2]) != server_pid:  # process group
            continue
        server += int(fields[11]) + int(fields[12])  # utime, stime
        if stat.parent.name == str(server_pid):
            server += int(fields[13]) + int(fields[14])  # cutime, cstime: reaped workers
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_line = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in cpu_line[:8])
    return CpuUse(
        server=server / tick,
        children=children.ru_utime + children.ru_stime,
        machine=(user + nice + system + irq + softirq + steal) / tick,
        database_processes=database,
    )


def run(args: argparse.Namespace, work: Path) -> int:
    wrk = ensure_wrk()
    database_url = args.database_url or f"sqlite:///{work / 'cirelay.db'}"
    keys = (secrets.token_urlsafe(24),)
    queue_secret = secrets.token_urlsafe(24)
    env = server_env(args, database_url, keys, queue_secret)
    print_machine(args, database_url, wrk)

    # the job pool: one slice per wrk run of cirelay (warm-up, then each round), each
    # partitioned by wrk thread in Lua; the other servers store nothing and wrap around
    per_second = args.jobs // (WARMUP_SECONDS + args.rounds * args.duration)
    slices = {"warm-up": (0, per_second * WARMUP_SECONDS)}
    for k in range(args.rounds):
        first = per_second * (WARMUP_SECONDS + k * args.duration)
        slices[f"round {k + 1}"] = (first, per_second * args.duration)
    jobs_file = work / "jobs.txt"
    body_file = work / "notification.xml"
    body_file.write_text(notification_template())
    started = time.monotonic()
    prepare_database(database_url, args.endpoint, args.jobs, keys, jobs_file)
    if args.endpoint == "job":
        print(f"prepared {args.jobs} jobs in state Submitted in {time.monotonic() - started:.1f} s")
    else:
        print(f"queue endpoint: wrk makes up to {args.jobs} fresh JobIds (no jobs prepared)")

    def lua_env(server: Server, label: str) -> dict[str, str]:
        first, count = slices[label]
        wrap = not server.name.startswith("cirelay")  # cirelay-ref: its own database
        return {
            "BENCH_MODE": args.endpoint,
            "BENCH_JOBS_FILE": str(jobs_file),
            "BENCH_FIRST": str(first),
            "BENCH_COUNT": str(count if args.endpoint == "job" else count // WRK_THREADS),
            "BENCH_RUN": secrets.token_hex(7),
            "BENCH_THREADS": str(WRK_THREADS),
            "BENCH_BODY_FILE": str(body_file),
            "BENCH_QUEUE_PATH": f"/callbacks/ci/queue/{queue_secret}",
            "BENCH_WRAP": "1" if wrap else "0",
            "BENCH_OUT": str(work / f"{server.name}-{label.replace(' ', '-')}"),
        }

    def load(server: Server, label: str, seconds: int) -> WrkResult:
        before = cpu_snapshot(server.pid)
        env = lua_env(server, label)
        result = run_wrk(wrk, server.url, args.connections, seconds, env, label, args.verbose)
        result.cpu = cpu_snapshot(server.pid) - before
        print_wrk(server.name, result)
        if result.non2xx or result.ok == 0:
            why = f"ran out of jobs ({result.exhausted}), raise --jobs" if result.exhausted else ""
            if label == "warm-up" or server.name != "cirelay":
                raise BenchError(f"{server.name} failed {label} {why}:\n{server.log_tail()}")
        return result

    def warm_up(server: Server) -> WrkResult:
        """The warm-up; before it, the other servers are loaded until they answer at all (at
        most twice): floor-tx copies cirelay's jobs into its own tables on its first
        request, which can take a whole warm-up. Not cirelay: its jobs are used once."""
        for _ in range(2 if server.name != "cirelay" else 0):
            result = run_wrk(wrk, server.url, args.connections, WARMUP_SECONDS,
                             lua_env(server, "warm-up"), "warm-up", args.verbose)  # fmt: skip
            if result.responses:
                break
            print(f"  {server.name} answered nothing during the warm-up: warming up again")
        return load(server, "warm-up", WARMUP_SECONDS)

    # each floor: its name, its app, its SQLite file, and the PostgreSQL database it writes
    # to instead when --database-url names one, with the table of its notifications there
    floors: list[tuple[str, str, Path, str | None, str]] = []
    if args.floor:
        reset_floor(database_url)
        postgresql = database_url if dialect(database_url) == "postgresql" else None
        floors.append(("floor", FLOOR_APP, work / "floor.db", postgresql, "floor_n"))
        if args.transaction_floor:
            floors.append(("floor-tx", TRANSACTION_FLOOR_APP, work / "floor-tx.db", postgresql,
                           "floor_tx_n"))  # fmt: skip
    with contextlib.ExitStack() as stack:
        # all servers up at once; only the one under load uses CPU (the others wait in
        # poll), so the rounds alternate between them and the VM's drift hits each alike
        cirelay = stack.enter_context(
            Server("cirelay", cirelay_command(args), env, work, ready_status=200)
        )
        servers = [cirelay, stack.enter_context(
            Server("bare", bare_command(args), env, work, ready_status=None)
        )]  # fmt: skip
        if args.compare_tree:
            servers.append(stack.enter_context(reference_server(args, env, work, jobs_file)))
        for name, app, path, *_ in floors:
            floor_env = dict(env, FLOOR_MODE="commit", FLOOR_SQLITE_PATH=str(path),
                             FLOOR_JOBS_DATABASE_URL=database_url)  # fmt: skip
            command = bare_command(args, app=app)
            servers.append(stack.enter_context(
                Server(name, command, floor_env, work, ready_status=None)
            ))  # fmt: skip
        warm = {server.name: warm_up(server) for server in servers}
        rounds: list[dict[str, WrkResult]] = []
        for k in range(args.rounds):
            rounds.append({s.name: load(s, f"round {k + 1}", args.duration) for s in servers})
        cirelay.stop()  # graceful: what is in flight finishes before the database is read
        durable = verify_durability(
            database_url, [warm["cirelay"]] + [r["cirelay"] for r in rounds], args.connections
        )
        by_name = {server.name: server for server in servers}
        for name, _, path, postgresql, table in floors:
            by_name[name].stop()
            rows = floor_rows(path, postgresql, table)
            answered = warm[name].ok + sum(r[name].ok for r in rounds)
            print(
                f"  {name} durability: {rows} rows committed for {answered} 2xx answers "
                f"({'every 2xx committed' if rows >= answered else 'ROWS MISSING'})"
            )

    print_table(rounds, dialect(database_url))
    cirelay_runs = [warm["cirelay"]] + [r["cirelay"] for r in rounds]
    ok = durable and all(r.non2xx == 0 for r in cirelay_runs)
    if not ok:
        print("FAILED: cirelay answered non-2xx or lost/duplicated a notification")
    return 0 if ok else 1


class BenchError(Exception):
    pass


# --- preparation --------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 or not shutil.which("sudo") else ["sudo", "-n"]
    install = [*sudo, "apt-get", "install", "-y", "wrk"]
    print(f"wrk not found: running {' '.join(install)}", flush=True)
    if subprocess.run(install, check=False).returncode != 0:
        update = [*sudo, "apt-get", "update"]
        print(f"install failed: running {' '.join(update)}, then the install again", flush=True)
        subprocess.run(update, check=False)
        subprocess.run(install, check=False)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is required (Debian package 'wrk') and could not be installed")
    return found


def notification_template() -> str:
    """The corpus's VoiceSeparate Success notification, its JobId left for wrk to fill in."""
    text = NOTIFICATION.read_text()
    assert "<State>Success</State>" in text and "<Tag>VoiceSeparate</Tag>" in text
    text, n = re.subn(r"<JobId>[^<]*</JobId>", "<JobId>{{JOBID}}</JobId>", text)
    assert n == 1, "expected exactly one JobId"
    return text


def prepare_database(
    url: str, endpoint: str, n_jobs: int, keys: tuple[str, ...], out: Path
) -> None:
    import sqlalchemy as sa

    from app import store
    from app.migrations import upgrade
    from app.models import new_id
    from app.tokens import sign_job

    engine = store.create_engine(url)
    try:
        if engine.dialect.name != "sqlite":  # start from an empty database
            print(
                f"emptying {engine.url.render_as_string(hide_password=True)}: dropping "
                "cirelay's tables and alembic_version",
                flush=True,
            )
            with engine.begin() as conn:
                store.metadata.drop_all(conn)
                conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
        upgrade(engine)
        if endpoint != "job":
            return
        now = datetime.now(UTC)
        chunk: list[dict[str, Any]] = []
        with out.open("w") as lines, store.transaction(engine) as conn:
            for i in range(n_jobs):
                job_id = new_id("job", now)
                ci_job_id = "j" + secrets.token_hex(16)
                lines.write(f"/callbacks/ci/{job_id}/{sign_job(job_id, keys)} {ci_job_id}\n")
                chunk.append(
                    {
                        "id": job_id,
                        "ci_job_id": ci_job_id,
                        "origin": "api",
                        "state": "Submitted",
                        "tag": "VoiceSeparate",
                        "detail": {},
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                if len(chunk) == 10_000 or i == n_jobs - 1:
                    conn.execute(sa.insert(store.jobs), chunk)
                    chunk = []
    finally:
        engine.dispose()


def server_env(
    args: argparse.Namespace, database_url: str, keys: tuple[str, ...], queue_secret: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    env.update(
        CIRELAY_DATABASE_URL=database_url,
        CIRELAY_API_KEYS=secrets.token_urlsafe(24),
        CIRELAY_CALLBACK_KEYS=",".join(keys),
        CIRELAY_QUEUE_CALLBACK_SECRET=queue_secret,
        CIRELAY_WORKERS=str(args.workers),
        CIRELAY_WORKER_CLASS=args.worker_class,
        CIRELAY_THREADS=str(args.threads),
        PYTHONUNBUFFERED="1",
    )
    return env


def _venv_bin() -> Path:
    """The directory of the venv's scripts: this interpreter's, else the repo's .venv."""
    here = Path(sys.executable).parent
    return here if (here / "cirelay").exists() else REPO / ".venv" / "bin"


def cirelay_command(args: argparse.Namespace) -> list[str]:
    return [
        str(_venv_bin() / "cirelay"),
        "serve",
        "--host",
        HOST,
        "--port",
        "{port}",
        "--workers",
        str(args.workers),
    ]


def dialect(database_url: str) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"


def reset_floor(database_url: str) -> None:
    """The floors' PostgreSQL tables start empty (their SQLite files are new in each run)."""
    if dialect(database_url) == "postgresql":
        import psycopg

        with psycopg.connect(_psycopg_url(database_url), autocommit=True) as db:
            db.execute("DROP TABLE IF EXISTS floor_n, floor_tx_n, floor_tx_j, floor_tx_e")


def floor_rows(sqlite_path: Path, postgresql_url: str | None, table: str) -> int:
    """The notifications a floor committed: in its PostgreSQL ``table``, else in its SQLite
    file (table ``n``)."""
    if postgresql_url:
        import psycopg

        with psycopg.connect(_psycopg_url(postgresql_url)) as db:
            row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    else:
        import sqlite3

        with contextlib.closing(sqlite3.connect(sqlite_path)) as db:
            row = db.execute("SELECT count(*) FROM n").fetchone()
    return int(row[0]) if row else 0


def _psycopg_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


def bare_command(args: argparse.Namespace, app: str | None = None) -> list[str]:
    from app.serving import gunicorn_conf

    app = app or args.baseline
    if args.worker_class == gunicorn_conf.EVENT_LOOP_WORKER:  # ASGI: the WSGI app in threads
        app = f"bench.asgi_apps:wrap({app!r})"
    return [
        str(_venv_bin() / "python"),
        "-m",
        "gunicorn",
        "--config",
        "python:app.serving.gunicorn_conf",
        "--bind",
        f"{HOST}:{{port}}",
        "--workers",
        str(args.workers),
        app,
    ]


# --- servers ------------------------------------------------------------------------------


def reference_server(args: argparse.Namespace, env: dict[str, str], work: Path,
                     jobs_file: Path) -> Server:  # fmt: skip
    """cirelay served from ``--compare-tree``, on a SQLite file its own migrations made,
    holding the jobs of ``jobs_file`` (the same ids and tokens as cirelay's)."""
    tree = args.compare_tree.resolve()
    database = f"sqlite:///{work / 'cirelay-ref.db'}"
    load = """if True:
        import sys
        from datetime import UTC, datetime

        import sqlalchemy as sa

        from app import store
        from app.migrations import upgrade

        engine = store.create_engine(sys.argv[1])
        upgrade(engine)
        now = datetime.now(UTC)
        with open(sys.argv[2]) as lines:
            pairs = [line.split() for line in lines]
        rows = [{"id": path.split("/")[3], "ci_job_id": ci_job_id, "origin": "api",
                 "state": "Submitted", "tag": "VoiceSeparate", "detail": {},
                 "created_at": now, "updated_at": now} for path, ci_job_id in pairs]
        with engine.begin() as conn:
            conn.execute(sa.insert(store.jobs), rows)
    """
    python = str(_venv_bin() / "python")
    tree_env = dict(env, CIRELAY_DATABASE_URL=database, PYTHONPATH=str(tree))
    subprocess.run([python, "-c", load, database, str(jobs_file)], cwd=tree, env=tree_env,
                   check=True)  # fmt: skip
    command = [python, "-m", "app.cli", *cirelay_command(args)[1:]]
    return Server("cirelay-ref", command, tree_env, work, ready_status=200, cwd=tree)


def job_slice_load(
    wrk: str, server: Server, jobs_file: Path, first: int, count: int, body_file: Path,
    connections: int, seconds: int, label: str,
) -> WrkResult:  # fmt: skip
    """wrk's notification load on a slice of the prepared jobs (each job notified once),
    printed: what ``bench/slow_clients.py`` and ``bench/stream.py`` run."""
    lua = {
        "BENCH_MODE": "job", "BENCH_JOBS_FILE": str(jobs_file),
        "BENCH_FIRST": str(first), "BENCH_COUNT": str(count),
        "BENCH_RUN": secrets.token_hex(7), "BENCH_THREADS": str(WRK_THREADS),
        "BENCH_BODY_FILE": str(body_file), "BENCH_QUEUE_PATH": "/", "BENCH_WRAP": "0",
        "BENCH_OUT": str(body_file.parent / f"{server.name}-{label.replace(' ', '-')}-{first}"),
    }  # fmt: skip
    result = run_wrk(wrk, server.url, connections, seconds, lua, label)
    print_wrk(server.name, result)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Server:
    """A gunicorn (master + workers) in its own session, stopped however the block ends."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        work: Path,
        ready_status: int | None,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = dict(
            env,
            PROMETHEUS_MULTIPROC_DIR=str(work / f"prometheus-{name}"),
            CIRELAY_PUBLIC_URL=self.url,
        )
        self.log_path = work / f"{name}.log"
        self.ready_status = ready_status
        self.process: subprocess.Popen[bytes] | None = None
        self.pid = 0

    def __enter__(self) -> Server:
        print(f"starting {self.name}: {' '.join(self.command)}", flush=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches us, not it
            )
        self.pid = self.process.pid  # also its process group id
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        """cirelay: /readyz answers 200. The bare app: any HTTP answer at all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited at start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                time.sleep(0.1)
                continue
            if self.ready_status is None or status == self.ready_status:
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # gunicorn: graceful, in-flight requests finish
        try:
            process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the group we created, nothing else
            process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


# --- load ---------------------------------------------------------------------------------

_BENCH_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    lua_env: dict[str, str],
    label: str,
    verbose: bool = False,
) -> WrkResult:
    command = [
        wrk,
        "-t",
        str(WRK_THREADS),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    process = subprocess.Popen(
        command,
        env={**os.environ, **lua_env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=seconds + 120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if verbose:
        print("    " + output.strip().replace("\n", "\n    "), flush=True)
    match = _BENCH_LINE.search(output)
    if process.returncode != 0 or not match:
        raise BenchError(f"wrk failed (exit {process.returncode}):\n{output}")
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    out = lua_env["BENCH_OUT"]
    return WrkResult(
        label=label,
        responses=int(fields["responses"]),
        ok=int(fields["ok"]),
        non2xx=int(fields["non2xx"]),
        duration_s=int(fields["duration_us"]) / 1e6,
        p50_ms=int(fields["p50_us"]) / 1e3,
        p90_ms=int(fields["p90_us"]) / 1e3,
        p99_ms=int(fields["p99_us"]) / 1e3,
        max_ms=int(fields["max_us"]) / 1e3,
        errors={k[4:]: int(v) for k, v in fields.items() if k.startswith("err_") and int(v)},
        exhausted=int(fields["exhausted"]),
        statuses=fields["statuses"],
        outcomes=fields["outcomes"],
        generated=Path(out + ".generated").read_text().split(),
        answered=Path(out + ".answered").read_text().split(),
    )


# --- durability ---------------------------------------------------------------------------


def verify_durability(database_url: str, runs: list[WrkResult], connections: int) -> bool:
    """Every 2xx is committed; nothing is committed that was not sent; nothing twice.

    wrk stops at its deadline without waiting for the requests then in flight (at most one
    per connection). The server finishes those (gunicorn's graceful stop), so they are
    committed although wrk never counted their answer: reported, and allowed only for
    requests wrk sent and did not see answered.
    """
    import sqlalchemy as sa

    from app import store

    engine = store.create_engine(database_url)
    try:
        with engine.connect() as conn:
            n, c = store.notifications, store.jobs
            rows = conn.execute(sa.select(n.c.ci_job_id, n.c.outcome)).all()
            success = set(
                conn.execute(sa.select(c.c.ci_job_id).where(c.c.state == "Success")).scalars()
            )
            quarantined = conn.execute(
                sa.select(sa.func.count()).select_from(store.quarantined_notifications)
            ).scalar_one()
    finally:
        engine.dispose()
    accepted = [ci for ci, outcome in rows if outcome == "accepted"]
    accepted_set = set(accepted)
    others = len(rows) - len(accepted)

    print("\ndurability (server stopped, database read back):")
    ok = True
    for run in runs:
        sent = set(run.generated)
        answered = set(run.answered)
        committed = accepted_set & sent
        lost = answered - committed
        in_flight = committed - answered
        print(
            f"  {run.label:9} 2xx responses seen by wrk {run.ok:>8}   "
            f"accepted notification rows {len(committed):>8}   "
            f"jobs in Success {len(success & sent):>8}"
        )
        if in_flight:
            print(
                f"  {'':9} of which {len(in_flight)} committed while wrk's deadline cut off "
                f"the answer (requests in flight, at most one per connection)"
            )
        if len(answered) != run.ok:
            print(f"  MISMATCH: {run.ok} 2xx but {len(answered)} distinct JobIds answered")
            ok = False
        if lost:
            print(f"  MISMATCH: {len(lost)} answered 2xx but not committed")
            ok = False
        if len(in_flight) > connections or not in_flight <= sent - answered:
            print(f"  MISMATCH: {len(in_flight)} committed without an answer (> {connections})")
            ok = False
        if committed != success & sent:
            print("  MISMATCH: accepted notifications and jobs in Success differ")
            ok = False
    everything = set().union(*(set(run.generated) for run in runs))
    print(
        f"  total     accepted rows {len(accepted)}, jobs in Success {len(success)}, "
        f"other outcomes {others}, quarantined {quarantined}"
    )
    if len(accepted) != len(accepted_set) or others or quarantined:
        print("  MISMATCH: duplicate, stale or quarantined notifications")
        ok = False
    if accepted_set != success or not accepted_set <= everything:
        print("  MISMATCH: accepted notifications, jobs in Success and requests sent differ")
        ok = False
    print(f"  {'every 2xx durably committed, nothing twice' if ok else 'FAILED'}")
    return ok


# --- output -------------------------------------------------------------------------------


def print_machine(args: argparse.Namespace, database_url: str, wrk: str) -> None:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [
            str(_venv_bin() / "python"),
            "-c",
            "import sys, gunicorn, flask; "
            "print(sys.version.split()[0], gunicorn.__version__, flask.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split() or ["?", "?", "?"]
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    threaded = args.worker_class == "gthread" or args.worker_class.endswith("ThreadWorker")
    threads = f", {args.threads} threads" if threaded else ""
    print(
        f"machine   nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), {model}\n"
        f"software  python {version[0]}, gunicorn {version[1]}, flask {version[2]}, "
        f"{wrk_version.stdout.split(' [')[0].strip() or 'wrk'}\n"
        f"gunicorn  {args.workers} x {args.worker_class}{threads} "
        f"(app.serving.gunicorn_conf), both servers\n"
        f"load      wrk -t{WRK_THREADS} -c{args.connections}, {WARMUP_SECONDS} s warm-up + "
        f"{args.duration} s, endpoint {args.endpoint}, every request a distinct job, "
        f"{NOTIFICATION.stat().st_size} B XML\n"
        f"database  {_redacted(database_url)}\n"
        f"code      {code_fingerprint()}",
        flush=True,
    )


def code_fingerprint() -> str:
    """Which cirelay was measured: a hash of app/ and the time of its newest file."""
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted((REPO / "app").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    changed = datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"app/ sha256 {digest.hexdigest()[:12]}, newest file {changed}"


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def print_wrk(name: str, r: WrkResult) -> None:
    extra = f" errors {r.errors}" if r.errors else ""
    extra += f" JOBS EXHAUSTED {r.exhausted}" if r.exhausted else ""
    outcomes = f" outcomes {r.outcomes}" if r.outcomes else ""
    cpu = ""
    if r.cpu:
        cpu = (
            f"  cpu-s server {r.cpu.server:.1f} wrk {r.cpu.children:.1f} "
            f"postgres {r.cpu.database:.1f} others {r.cpu.others:.1f} of {_capacity(r):.1f}"
        )
    print(
        f"  {name:8} {r.label:9} {r.ok_per_second:8.1f} 2xx/s  p50 {r.p50_ms:6.2f} ms  "
        f"p99 {r.p99_ms:7.2f} ms  statuses {r.statuses}{outcomes}{extra}{cpu}",
        flush=True,
    )


def _capacity(r: WrkResult) -> float:
    return len(os.sched_getaffinity(0)) * r.duration_s


def combined(runs: list[WrkResult]) -> WrkResult:
    """One server's rounds as one: requests, time and CPU summed; latencies the median of the
    rounds' (the max: the largest)."""

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    cpu = [r.cpu for r in runs if r.cpu]
    return WrkResult(
        label="all rounds",
        responses=sum(r.responses for r in runs),
        ok=sum(r.ok for r in runs),
        non2xx=sum(r.non2xx for r in runs),
        duration_s=sum(r.duration_s for r in runs),
        p50_ms=median([r.p50_ms for r in runs]),
        p90_ms=median([r.p90_ms for r in runs]),
        p99_ms=median([r.p99_ms for r in runs]),
        max_ms=max(r.max_ms for r in runs),
        cpu=CpuUse(
            server=sum(c.server for c in cpu),
            children=sum(c.children for c in cpu),
            machine=sum(c.machine for c in cpu),
            database=sum(c.database for c in cpu),
        )
        if cpu
        else None,
    )


def print_table(rounds: list[dict[str, WrkResult]], database: str) -> None:
    names = list(rounds[0])
    total = {name: combined([r[name] for r in rounds]) for name in names}
    print(
        f"\n{len(rounds)} rounds of {rounds[0]['cirelay'].duration_s:.0f} s per server, "
        "taken in turn (latencies: median of the rounds)"
    )
    print(
        f"{'server':11} {'requests/s':>11} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'non-2xx':>8} {'server CPU ms/req':>18} {'postgres ms/req':>16} "
        f"{'others CPU %':>13}"
    )
    for name, r in total.items():
        others = 100 * r.cpu.others / _capacity(r) if r.cpu else 0.0
        print(
            f"{name:11} {r.ok_per_second:11.1f} {r.p50_ms:8.2f} {r.p90_ms:8.2f} "
            f"{r.p99_ms:8.2f} {r.max_ms:8.2f} {r.non2xx:8d} "
            f"{r.server_cpu_ms_per_request:18.3f} {r.database_cpu_ms_per_request:16.3f} "
            f"{others:13.1f}"
        )
    target = TARGET_RATIO[database]

    def ratios(name: str, base: str = "bare") -> str:
        each = " ".join(f"{_ratio(r[name], r[base]):.3f}" for r in rounds)
        return f"{_ratio(total[name], total[base]):.3f}   (rounds: {each})"

    ratio = _ratio(total["cirelay"], total["bare"])
    verdict = "met" if ratio >= target else "NOT met"
    print(f"ratio = cirelay/bare   = {ratios('cirelay')}   target on {database} >= {target}: "
          f"{verdict}")  # fmt: skip
    if "cirelay-ref" in total:
        print(
            f"A/B   = cirelay/cirelay-ref = {ratios('cirelay', 'cirelay-ref')}   this tree "
            "against --compare-tree"
        )
    if "floor" in total:
        print(
            f"floor = floor/bare     = {ratios('floor')}   the least any receiver that "
            "validates and durably commits does"
        )
    if "floor-tx" in total:
        print(
            f"        floor-tx/bare  = {ratios('floor-tx')}   the least any receiver that does "
            "issue 2 section 4's transaction does (on PostgreSQL: as a fleet)"
        )
        print(
            f"        cirelay/floor-tx = {ratios('cirelay', 'floor-tx')}   what cirelay reaches "
            "of the least its transaction costs"
        )
    if any(r.cpu and r.cpu.others > 0.1 * _capacity(r) for r in total.values()):
        print(
            "warning: processes outside the benchmark used over 10% of the CPUs during a "
            "measured run; requests/s are low and the ratio is noisy ('others CPU %')"
        )


def _ratio(a: WrkResult, b: WrkResult) -> float:
    return a.ok_per_second / b.ok_per_second if b.ok_per_second else 0.0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
