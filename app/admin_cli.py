"""The operator's commands of ``cirelay``: ``quarantine list|show|replay`` and
``subscriptions list|replay``. Replays go through :mod:`app.operations`, as the console's and
the admin API's do, so each is in the audit log (``via`` ``cli``, the operating-system user
as the actor)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time

from app import build_services, operations, store, utc_now
from app.config import Settings, command_environ
from app.errors import ServiceError
from app.models import Actor


def _actor() -> Actor:
    """Who the audit log says replayed something from the command line: the operating
    system's user (a container's uid may have no name: then ``uid <n>``)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = f"uid {os.getuid()}"
    return Actor(name=name, via="cli")


def command_settings(requires: frozenset[str] | tuple[str, ...] = ()) -> Settings:
    """This command's settings: the environment, or ``var/dev-secrets`` when it sets
    nothing; only ``requires`` of the secrets must be there."""
    return Settings.from_env(command_environ(), requires=requires)


# --- quarantine ---------------------------------------------------------------------------


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    engine = store.create_engine(command_settings().database_url)
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
    engine = store.create_engine(command_settings().database_url)
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
    services = build_services(command_settings())
    ids = args.ids
    if not ids:
        with services.engine.connect() as conn:
            ids = [q.id for q in store.list_quarantined(conn, pending_only=True, limit=100_000)]
    failures = 0
    for ident in ids:
        try:
            outcome = operations.replay_quarantined(services.receiver, ident, _actor(), utc_now())
        except ServiceError as exc:
            outcome = exc.code
        ok = outcome in ("accepted", "duplicate", "stale")
        failures += not ok
        print(f"{ident:>6}  {outcome}")
    print(f"replayed {len(ids)}, {len(ids) - failures} recorded, {failures} still invalid")
    return 1 if failures else 0


def cmd_subscriptions_list(args: argparse.Namespace) -> int:
    services = build_services(command_settings())
    with services.engine.connect() as conn:
        items = store.list_subscriptions(conn)
    for item in items:
        state = "enabled" if item.enabled else f"disabled ({item.disabled_reason or 'by hand'})"
        print(f"{item.id}  {state:<10}  {','.join(item.event_types):<24}  {item.view()['url']}")
    return 0


def cmd_subscriptions_replay(args: argparse.Namespace) -> int:
    """Enqueue a replay, then follow its deliveries (done by ``cirelay worker``) on a bar."""
    from tqdm import tqdm

    from app import delivery

    services = build_services(command_settings())
    try:
        since = delivery.parse_since(args.since) if args.since else None
    except ServiceError:
        print("--since: an RFC 3339 time with offset, e.g. 2026-11-25T08:00:00Z",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        replay = operations.start_replay(
            services.engine, args.id, _actor(), utc_now(), event_id=args.event, since=since
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
