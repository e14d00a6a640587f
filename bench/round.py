"""The deliverer's round, alone: wall time and statements of a round that fans out one new
event and claims its delivery, the round a worker runs for each event at a steady rate.

    .venv/bin/python bench/round.py [--database-url postgresql://…] [--rounds 300]

In one process, with no load beside it: each round follows one notification (posted through
the application, untimed) and must fan out and claim exactly one delivery, sent to a
subscriber on loopback. Results wait (``results_wait`` of 10 minutes), so no round records
them. SQLite in a temporary directory unless ``--database-url`` (its cirelay tables are
dropped first). On PostgreSQL each statement is a round trip to a server process, which is
what the figure mostly measures; compare two checkouts by running each one's copy in turn
(``PYTHONPATH=<checkout>``), alternating, as ``bench/RESULTS.md`` does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app import build_services, create_app, store  # noqa: E402
from app.config import Settings  # noqa: E402
from app.delivery import Deliverer, Policy, Sender  # noqa: E402
from app.migrations import upgrade  # noqa: E402
from app.schemas import SchemaSet  # noqa: E402
from tests.conftest import (  # noqa: E402
    API_KEY,
    CALLBACK_KEYS,
    QUEUE_SECRET,
    Clock,
    ci_job_id,
    make_job,
    notification_xml,
)
from tests.subscriber import Subscriber  # noqa: E402

LOOPBACK = ("127.0.0.0/8",)
WARM_UP = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL (default: SQLite in a temp dir)")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        url = args.database_url or f"sqlite:///{Path(work) / 'round.db'}"
        times, statements = measure(url, args.rounds)
    deciles = statistics.quantiles(times, n=10)
    print(
        f"{store.create_engine(url).dialect.name}: a round that fans out and claims one event:"
        f" median {statistics.median(times):.2f} ms, mean {statistics.mean(times):.2f} ms,"
        f" p90 {deciles[-1]:.2f} ms, {statistics.median(statements):g} statements"
        f" ({len(times)} rounds after {WARM_UP} to warm up)"
    )


def measure(url: str, rounds: int) -> tuple[list[float], list[int]]:
    """Each timed round's wall time (ms) and statement count."""
    engine = store.create_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            store.metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    upgrade(engine)
    settings = Settings(
        database_url=url, public_url="http://cirelay.test", api_keys=(API_KEY,),
        callback_keys=CALLBACK_KEYS, queue_callback_secrets=(QUEUE_SECRET,),
        delivery_allowed_networks=LOOPBACK,
    )  # fmt: skip
    clock = Clock()
    services = build_services(
        settings, registry=CollectorRegistry(), engine=engine, schemas=SchemaSet.load(),
        clock=clock,
    )  # fmt: skip
    client = create_app(services=services).test_client()
    counted = [0]

    def count(*_: Any) -> None:
        counted[0] += 1

    times: list[float] = []
    statements: list[int] = []
    with Subscriber() as hook:
        answer = client.post(
            "/v1/subscriptions", json={"url": hook.url()},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )  # fmt: skip
        assert answer.status_code == 201, answer.json
        policy = Policy(schedule=(10.0,), disable_after=timedelta(hours=1), timeout=5.0)
        deliverer = Deliverer(
            engine, policy, Sender(allowed_networks=LOOPBACK, timeout=5.0), services.metrics,
            clock=clock, concurrency=4 * (rounds + WARM_UP), results_wait=600.0,
        )  # fmt: skip
        sa.event.listen(engine, "before_cursor_execute", count)
        for i in range(rounds + WARM_UP):
            path = make_job(engine, f"job_{i:05d}", clock(), ci_job_id(i))
            posted = client.post(path, data=notification_xml(ci_job_id(i), "Running"),
                                 headers={"Content-Type": "application/xml"})  # fmt: skip
            assert posted.status_code == 200, posted.json
            time.sleep(0.002)  # the last attempt's thread done: the round runs alone
            counted[0] = 0
            began = time.perf_counter()
            done = deliverer.run_round()
            elapsed = (time.perf_counter() - began) * 1000
            assert (done.fanned_out, done.claimed) == (1, 1), done
            if i >= WARM_UP:
                times.append(elapsed)
                statements.append(counted[0])
        sa.event.remove(engine, "before_cursor_execute", count)
        deliverer.close()
    engine.dispose()
    return times, statements


if __name__ == "__main__":
    main()
