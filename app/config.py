"""Settings: the only module that reads ``os.environ``.

``Settings.from_env()`` coerces every ``CIRELAY_*`` variable, collects every problem and raises
one :class:`ConfigError` listing them all, so a misconfigured deployment fails at start-up with
the whole list instead of one variable at a time. No secret has a default outside ``dev()``.
"""

from __future__ import annotations

import enum
import os
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from app.subscriptions import Login, parse_broker_credentials

DEFAULT_DATABASE_URL = "sqlite:///./var/cirelay.db"
#: seconds between delivery attempts: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h
DEFAULT_RETRY_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)

#: what ``cirelay up`` uses where the environment says nothing
DEV_DEFAULTS = {
    "CIRELAY_CI_BUCKET": "media-1250000000",
    "CIRELAY_CI_REGION": "ap-guangzhou",
    "CIRELAY_CI_ENDPOINT": "http://127.0.0.1:8081",
    "CIRELAY_RECONCILE_AFTER_SECONDS": "10",
    "CIRELAY_RECONCILE_INTERVAL_SECONDS": "2",
    "CIRELAY_LOG_FORMAT": "text",  # a person reads these
    # subscribers on this machine are fine for a local stack
    "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
}

#: where ``cirelay up`` keeps the secrets it generated, and every other command finds them
DEV_SECRETS = Path("var") / "dev-secrets"
#: the secrets ``Settings.dev`` generates and keeps in ``dev-secrets``
DEV_SECRET_NAMES = (
    "CIRELAY_API_KEYS",
    "CIRELAY_CALLBACK_KEYS",
    "CIRELAY_QUEUE_CALLBACK_SECRET",
    "CIRELAY_CI_SECRET_ID",
    "CIRELAY_CI_SECRET_KEY",
)
#: what the service needs; a command asks ``from_env`` only for what it uses (``requires``)
REQUIRED = frozenset({"CIRELAY_API_KEYS", "CIRELAY_CALLBACK_KEYS"})


class Scope(enum.StrEnum):
    """What an API key may do."""

    READ = "read"  # GET (and HEAD) only; never another job's callback token
    ADMIN = "admin"  # everything


#: ``CIRELAY_WORKER_CLASS`` values that serve on gunicorn's event loop (unset: the default);
#: any other worker class holds a thread per connection, and so per event stream
EVENT_LOOP_WORKERS = ("", "app.serving.asgi_worker.Worker", "asgi")


@dataclass(frozen=True)
class ApiKey:
    """One entry of ``CIRELAY_API_KEYS``: ``name:scope:key``, or a bare key (admin, named
    ``key<position>``, as every key was before names and scopes). The name goes into the
    logs in place of the key."""

    name: str
    scope: Scope
    secret: bytes = field(repr=False)


_KEY_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
#: the shortest secret accepted, as for the callback keys and the queue secret
MIN_SECRET_LENGTH = 16


def parse_api_keys(entries: Sequence[str]) -> tuple[tuple[ApiKey, ...], list[str]]:
    """The keys of ``CIRELAY_API_KEYS``' entries, and every problem with them."""
    keys: list[ApiKey] = []
    problems: list[str] = []
    for position, entry in enumerate(entries, start=1):
        where = f"CIRELAY_API_KEYS entry {position}"
        if ":" not in entry:
            name, scope, secret = f"key{position}", Scope.ADMIN.value, entry
        else:
            name, _, rest = entry.partition(":")
            scope, _, secret = rest.partition(":")
            if not secret:
                problems.append(f"{where}: name:scope:key, or a bare key without ':'")
                continue
        if not name or len(name) > 64 or set(name) - _KEY_NAME:
            problems.append(f"{where}: a name is 1 to 64 of A-Z a-z 0-9 . _ -")
        if scope not in set(Scope):
            problems.append(f"{where}: the scope is read or admin, not {scope!r}")
        if len(secret) < MIN_SECRET_LENGTH:
            problems.append(f"{where}: the key must be at least {MIN_SECRET_LENGTH} characters")
        if any(k.name == name for k in keys):
            problems.append(f"{where}: the name {name!r} is used twice")
        keys.append(ApiKey(name, Scope(scope) if scope in set(Scope) else Scope.READ,
                           secret.encode()))  # fmt: skip
    return tuple(keys), problems


class ConfigError(Exception):
    """One or more environment variables are missing or malformed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    public_url: str = "http://127.0.0.1:8080"
    #: ``CIRELAY_API_KEYS`` as given (``name:scope:key`` or bare keys); see :attr:`api_credentials`
    api_keys: tuple[str, ...] = ()
    callback_keys: tuple[str, ...] = ()
    #: every one is accepted on the queue URL; the first is the one printed
    queue_callback_secrets: tuple[str, ...] = ()
    ci_endpoint: str | None = None
    ci_secret_id: str = ""
    ci_secret_key: str = field(default="", repr=False)
    ci_bucket: str = ""
    ci_region: str = ""
    delivery_allowed_networks: tuple[str, ...] = ()
    #: ``CIRELAY_BROKER_CREDENTIALS``: ``name=user:password`` entries a broker subscription
    #: names with ``credentials=<name>`` (see :attr:`broker_logins`)
    broker_credentials: tuple[str, ...] = field(default=(), repr=False)
    schema_dir: Path | None = None
    #: the largest notification body accepted, in bytes (413 above it)
    max_body_bytes: int = 1 << 20
    #: the deepest XML or JSON nesting accepted (400 above it)
    max_depth: int = 32
    #: trusted proxy hops in front of the service (X-Forwarded-*)
    proxy_hops: int = 0
    #: OpenTelemetry tracing (``CIRELAY_TRACING=on``; exporter from the ``OTEL_*`` variables)
    tracing: bool = False
    #: how long cirelay waits for CI's answer to one request
    ci_timeout_seconds: float = 10.0
    #: a job not finished and silent this long is looked up at CI by the reconciler
    reconcile_after_seconds: int = 300
    #: how often the worker looks for such jobs
    reconcile_interval_seconds: int = 30
    #: seconds before each retry of a failed webhook delivery (jitter added); after the last
    #: one the delivery is given up. The default spreads 9 retries over about 16 hours.
    delivery_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    #: a subscription whose deliveries have kept failing this long is disabled (5 days)
    delivery_disable_after_seconds: int = 5 * 24 * 3600
    #: the longest one delivery attempt may take, connect to last byte read
    delivery_timeout_seconds: float = 15.0
    #: deliveries in flight at once per worker process (threads waiting on subscribers and
    #: brokers: a slot costs little, and half of them is one subscription's cap)
    delivery_concurrency: int = 32
    #: how often an idle worker looks for new events and due retries (when nothing wakes it:
    #: NOTIFY or the SQLite commit watcher do, and then it looks at least every 0.25 s)
    delivery_poll_seconds: float = 0.01
    #: finished deliveries (and their attempts) are kept this many days, then deleted
    delivery_retention_days: int = 30
    #: PostgreSQL connections kept per process (as many more may open under load)
    db_pool_size: int = 5
    #: PostgreSQL: seconds to open a connection (2 at least, libpq's minimum)
    db_connect_timeout_seconds: float = 2.0
    #: PostgreSQL: the server's ``statement_timeout``, and how long cirelay waits for any
    #: answer (plus a quarter second); 0 = no limit. A database that stops answering costs a
    #: request a 503 after this, not a hang.
    db_statement_timeout_seconds: float = 1.5
    #: PostgreSQL: how long a request waits for a pooled connection to come free (then 503)
    db_pool_timeout_seconds: float = 2.0
    #: deliveries in flight at once to one subscription, counted over every worker (default:
    #: half of ``delivery_concurrency``), so a slow subscriber leaves slots for the others
    delivery_per_subscription: int = 0
    #: deliveries per second a subscription that answers 2xx again is sent from its backlog
    #: of retries (brought forward, in order, instead of waiting out their backoff)
    delivery_recovery_rate: float = 200.0
    #: open event streams per process (on the event loop each costs a socket and a cursor,
    #: no thread: 2,000 by default; under a thread-per-connection worker class each holds a
    #: thread: half of ``threads`` by default). Above it: 503 with Retry-After.
    max_streams: int = 2000
    #: seconds a connection may take to send its request's headers, then it is closed
    header_timeout_seconds: float = 10.0
    #: seconds a request's body may take to arrive after its headers, then 408 and closed
    body_timeout_seconds: float = 30.0
    #: threads per process running the application on whole requests (``CIRELAY_THREADS``,
    #: also gthread's threads)
    threads: int = 16
    #: invalid notifications one source (a callback token's job, or the queue secret) may
    #: store in quarantine per minute; beyond it they get the same 400 and are only counted
    quarantine_per_minute: int = 60
    #: the job tags recorded from the queue's URL (``CIRELAY_ACCEPT_TAGS``); empty: every
    #: tag. A valid notification of another tag is answered 200, counted ``ignored``, not
    #: stored. Workflow notifications and jobs' own callbacks are always recorded.
    accept_tags: tuple[str, ...] = ()
    #: signs the console's session cookies and CSRF tokens; every replica behind a balancer
    #: needs the same one. Empty: derived from the first callback key (which they share)
    console_secret: str = field(default="", repr=False)
    #: a console session ends after this many minutes without a page being opened
    console_session_minutes: int = 30

    @property
    def queue_callback_secret(self) -> str:
        """The queue secret to print (the first of ``CIRELAY_QUEUE_CALLBACK_SECRET``)."""
        return self.queue_callback_secrets[0] if self.queue_callback_secrets else ""

    @cached_property
    def api_credentials(self) -> tuple[ApiKey, ...]:
        """The API keys with their names and scopes (:func:`parse_api_keys`)."""
        keys, problems = parse_api_keys(self.api_keys)
        if problems:
            raise ConfigError(problems)
        return keys

    @cached_property
    def broker_logins(self) -> dict[str, Login]:
        """``CIRELAY_BROKER_CREDENTIALS`` as name -> (user, password)."""
        return parse_broker_credentials(self.broker_credentials)[0]

    @property
    def admin_api_key(self) -> str | None:
        """The first admin key, as a client sends it (what ``cirelay up`` prints)."""
        admin = [k for k in self.api_credentials if k.scope is Scope.ADMIN]
        return admin[0].secret.decode() if admin else None

    def __repr__(self) -> str:  # never print secrets
        return (
            f"Settings(database_url={_redact_url(self.database_url)!r}, "
            f"public_url={self.public_url!r}, api_keys=<{len(self.api_keys)}>, "
            f"callback_keys=<{len(self.callback_keys)}>)"
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, requires: Collection[str] = REQUIRED
    ) -> Settings:
        """The settings in ``environ`` (default ``os.environ``); of the required secrets only
        those named in ``requires`` must be set (``cirelay quarantine list`` needs none)."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def text(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        def csv(name: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())

        def integer(name: str, default: int, minimum: int = 0) -> int:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{name}: not an integer")
                return default
            if value < minimum:
                problems.append(f"{name}: must be >= {minimum}")
            return value

        def number(name: str, default: float, minimum: float) -> float:
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"{name}: not a number")
                return default
            if not minimum <= value < float("inf"):
                problems.append(f"{name}: must be >= {minimum:g}")
                return default
            return value

        def schedule(name: str) -> tuple[float, ...]:
            raw = csv(name)
            if not raw:
                return DEFAULT_RETRY_SCHEDULE
            try:
                values = tuple(float(p) for p in raw)
            except ValueError:
                problems.append(f"{name}: comma-separated seconds, e.g. 5,30,120")
                return DEFAULT_RETRY_SCHEDULE
            if any(not 0 <= v < float("inf") for v in values):
                problems.append(f"{name}: every delay must be a number of seconds >= 0")
                return DEFAULT_RETRY_SCHEDULE
            return values

        threads = integer("CIRELAY_THREADS", 16, minimum=1)
        on_threads = text("CIRELAY_WORKER_CLASS") not in EVENT_LOOP_WORKERS
        default_streams = max(1, threads // 2) if on_threads else 2000
        settings = cls(
            database_url=text("CIRELAY_DATABASE_URL", DEFAULT_DATABASE_URL),
            public_url=text("CIRELAY_PUBLIC_URL", "http://127.0.0.1:8080").rstrip("/"),
            api_keys=csv("CIRELAY_API_KEYS"),
            callback_keys=csv("CIRELAY_CALLBACK_KEYS"),
            queue_callback_secrets=csv("CIRELAY_QUEUE_CALLBACK_SECRET"),
            ci_endpoint=text("CIRELAY_CI_ENDPOINT").rstrip("/") or None,
            ci_secret_id=text("CIRELAY_CI_SECRET_ID"),
            ci_secret_key=text("CIRELAY_CI_SECRET_KEY"),
            ci_bucket=text("CIRELAY_CI_BUCKET"),
            ci_region=text("CIRELAY_CI_REGION"),
            delivery_allowed_networks=csv("CIRELAY_DELIVERY_ALLOWED_NETWORKS"),
            broker_credentials=csv("CIRELAY_BROKER_CREDENTIALS"),
            schema_dir=Path(env["CIRELAY_SCHEMA_DIR"]) if env.get("CIRELAY_SCHEMA_DIR") else None,
            max_body_bytes=integer("CIRELAY_MAX_BODY_BYTES", 1 << 20, minimum=1024),
            max_depth=integer("CIRELAY_MAX_DEPTH", 32, minimum=8),
            proxy_hops=integer("CIRELAY_PROXY_HOPS", 0),
            ci_timeout_seconds=integer("CIRELAY_CI_TIMEOUT_SECONDS", 10, minimum=1),
            reconcile_after_seconds=integer("CIRELAY_RECONCILE_AFTER_SECONDS", 300, minimum=1),
            reconcile_interval_seconds=integer("CIRELAY_RECONCILE_INTERVAL_SECONDS", 30, minimum=1),
            delivery_retry_schedule=schedule("CIRELAY_DELIVERY_RETRY_SCHEDULE"),
            delivery_disable_after_seconds=integer(
                "CIRELAY_DELIVERY_DISABLE_AFTER_SECONDS", 5 * 24 * 3600, minimum=1
            ),
            delivery_timeout_seconds=number("CIRELAY_DELIVERY_TIMEOUT_SECONDS", 15.0, 0.1),
            delivery_concurrency=integer("CIRELAY_DELIVERY_CONCURRENCY", 32, minimum=1),
            delivery_poll_seconds=number("CIRELAY_DELIVERY_POLL_SECONDS", 0.01, 0.001),
            delivery_retention_days=integer("CIRELAY_DELIVERY_RETENTION_DAYS", 30, minimum=1),
            db_pool_size=integer("CIRELAY_DB_POOL_SIZE", 5, minimum=1),
            db_connect_timeout_seconds=number("CIRELAY_DB_CONNECT_TIMEOUT_SECONDS", 2.0, 2.0),
            db_statement_timeout_seconds=number("CIRELAY_DB_STATEMENT_TIMEOUT_SECONDS", 1.5, 0.0),
            db_pool_timeout_seconds=number("CIRELAY_DB_POOL_TIMEOUT_SECONDS", 2.0, 0.0),
            delivery_per_subscription=integer("CIRELAY_DELIVERY_PER_SUBSCRIPTION", 0, minimum=0),
            delivery_recovery_rate=number("CIRELAY_DELIVERY_RECOVERY_RATE", 200.0, 0.1),
            max_streams=integer("CIRELAY_MAX_STREAMS", default_streams, minimum=1),
            header_timeout_seconds=number("CIRELAY_HEADER_TIMEOUT_SECONDS", 10.0, 0.1),
            body_timeout_seconds=number("CIRELAY_BODY_TIMEOUT_SECONDS", 30.0, 0.1),
            threads=threads,
            quarantine_per_minute=integer("CIRELAY_QUARANTINE_PER_MINUTE", 60, minimum=1),
            accept_tags=csv("CIRELAY_ACCEPT_TAGS"),
            tracing=text("CIRELAY_TRACING", "off").lower() == "on",
            console_secret=text("CIRELAY_CONSOLE_SECRET"),
            console_session_minutes=integer("CIRELAY_CONSOLE_SESSION_MINUTES", 30, minimum=1),
        )
        if text("CIRELAY_TRACING", "off").lower() not in ("on", "off"):
            problems.append("CIRELAY_TRACING: on or off")
        if "CIRELAY_CALLBACK_KEYS" in requires and not settings.callback_keys:
            problems.append("CIRELAY_CALLBACK_KEYS: required (comma-separated HMAC keys)")
        if "CIRELAY_API_KEYS" in requires and not settings.api_keys:
            problems.append("CIRELAY_API_KEYS: required (comma-separated bearer tokens)")
        if any(len(s) < MIN_SECRET_LENGTH for s in settings.queue_callback_secrets):
            problems.append(
                "CIRELAY_QUEUE_CALLBACK_SECRET: every secret must be at least 16 characters"
            )
        problems += parse_api_keys(settings.api_keys)[1]
        if settings.console_secret and len(settings.console_secret) < MIN_SECRET_LENGTH:
            problems.append("CIRELAY_CONSOLE_SECRET: must be at least 16 characters")
        problems += parse_broker_credentials(settings.broker_credentials)[1]
        if any(len(k) < 16 for k in settings.callback_keys):
            problems.append("CIRELAY_CALLBACK_KEYS: every key must be at least 16 characters")
        if problems:
            raise ConfigError(problems)
        return settings

    @classmethod
    def dev(cls, data_dir: Path, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings for ``cirelay up``: the environment where set, generated secrets elsewhere.

        Generated secrets are written to ``data_dir/dev-secrets`` so that a restart keeps
        the same API key and callback URLs.
        """
        env = dict(os.environ if environ is None else environ)
        data_dir.mkdir(parents=True, exist_ok=True)
        stored = _load_dev_secrets(data_dir / "dev-secrets")
        env.setdefault("CIRELAY_DATABASE_URL", f"sqlite:///{data_dir / 'cirelay.db'}")
        for name in DEV_SECRET_NAMES:
            if name == "CIRELAY_CI_SECRET_ID":
                continue
            if not env.get(name):
                env[name] = stored.setdefault(name, secrets.token_hex(20))  # no leading "-"
        if not env.get("CIRELAY_CI_SECRET_ID"):
            env["CIRELAY_CI_SECRET_ID"] = stored.setdefault(
                "CIRELAY_CI_SECRET_ID", "AKID" + secrets.token_hex(16)
            )
        for name, value in DEV_DEFAULTS.items():
            env.setdefault(name, value)
        _save_dev_secrets(data_dir / "dev-secrets", stored)
        return cls.from_env(env)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def command_environ(
    environ: Mapping[str, str] | None = None, secrets_path: Path = DEV_SECRETS
) -> Mapping[str, str]:
    """The environment a ``cirelay`` command reads its settings from: ``environ`` itself,
    unless it sets neither the database nor any secret and ``secrets_path`` (what ``cirelay
    up`` wrote, ``var/dev-secrets``) exists; then that file's secrets, the dev defaults and
    the database beside it, under what ``environ`` does set (e.g. ``CIRELAY_LOG_LEVEL``).
    Never a mix of a deployment's settings with dev secrets."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in (*DEV_SECRET_NAMES, "CIRELAY_DATABASE_URL")):
        return env
    stored = _load_dev_secrets(secrets_path)
    if not stored:
        return env
    database = f"sqlite:///{secrets_path.parent.resolve() / 'cirelay.db'}"
    return {**DEV_DEFAULTS, "CIRELAY_DATABASE_URL": database, **stored, **env}


def _load_dev_secrets(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def _save_dev_secrets(path: Path, values: dict[str, str]) -> None:
    """Written by its owner alone from the first byte: created 0600 whatever the umask (a
    chmod after writing would leave a moment when others may open it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        if os.fstat(fd).st_mode & 0o077:  # an older file, made before this rule
            os.fchmod(fd, 0o600)
        out.write("".join(f"{k}={v}\n" for k, v in sorted(values.items())))
