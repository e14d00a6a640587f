"""How long the service takes to answer while PostgreSQL is behind a silent partition (not a
test; issue 14 §4). The Flask app on a real PostgreSQL (``--database-url``, emptied) reached
through ``tests/tcp_proxy.py``, which goes silent: connections stay open, nothing is
forwarded. Prints, for each request made during the partition, its status and how long it
took, then how long after the partition ends the service is ready again.

    .venv/bin/python bench/partition.py --database-url postgresql://postgres@127.0.0.1/x
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from app import build_services, create_app, store, utc_now
from app.config import Settings
from app.migrations import upgrade
from tests.conftest import (
    API_KEY,
    CALLBACK_KEYS,
    QUEUE_SECRET,
    make_job,
    notification_xml,
)
from tests.tcp_proxy import TcpProxy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rounds", type=int, default=3, help="requests of each kind")
    args = parser.parse_args()
    direct = store.create_engine(args.database_url)
    upgrade(direct)
    with direct.begin() as conn:
        tables = ", ".join(t.name for t in store.metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    ci_id = "j" + "0" * 31 + "1"
    path = make_job(direct, "job_0001", utc_now(), ci_id)
    with TcpProxy(direct.url.host or "127.0.0.1", direct.url.port or 5432) as proxy:
        url = direct.url.set(port=proxy.port).render_as_string(hide_password=False)
        settings = Settings(database_url=url, api_keys=(API_KEY,), callback_keys=CALLBACK_KEYS,
                            queue_callback_secrets=(QUEUE_SECRET,))  # fmt: skip
        app = create_app(services=build_services(settings, registry=CollectorRegistry()))
        client = app.test_client()
        auth = {"Authorization": f"Bearer {API_KEY}"}
        xml = {"Content-Type": "application/xml"}
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/jobs/job_0001", headers=auth).status_code == 200
        proxy.silence()
        print(f"{'during a silent partition':40} {'status':>6} {'seconds':>8}")
        for _ in range(args.rounds):
            for name, call in (
                ("GET /readyz", lambda: client.get("/readyz")),
                ("POST notification", lambda: client.post(
                    path, data=notification_xml(ci_id, "Running"), headers=xml)),
                ("GET /v1/jobs/<id>", lambda: client.get("/v1/jobs/job_0001", headers=auth)),
            ):  # fmt: skip
                started = time.monotonic()
                status = call().status_code
                print(f"{name:40} {status:>6} {time.monotonic() - started:8.2f}", flush=True)
        proxy.resume()
        resumed = time.monotonic()
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        print(f"ready again {time.monotonic() - resumed:.2f} s after the partition ended")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
