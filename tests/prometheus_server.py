"""A real Prometheus server for the tests (the Debian package's binary, ``make system-deps``):
it scrapes the given targets every second and answers PromQL through its HTTP API."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e_stack import free_port, poll, spawn, wait_http


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return path


@dataclass
class Prometheus:
    base: str

    def answer(self, promql: str) -> dict[str, Any]:
        """Prometheus' whole answer to an instant query (``status``, ``data`` or ``error``)."""
        response = requests.get(f"{self.base}/api/v1/query", params={"query": promql},
                                timeout=10)  # fmt: skip
        body: dict[str, Any] = response.json()
        return body

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = self.answer(promql)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def by_job(self, promql: str) -> dict[str, float]:
        return {r["metric"].get("job", ""): float(r["value"][1]) for r in self.query(promql)}


@contextmanager
def running_prometheus(targets: dict[str, int], directory: Path) -> Iterator[Prometheus]:
    """Prometheus scraping ``127.0.0.1:<port>`` as job ``<name>`` for each of ``targets``
    every second, once all of them are up."""
    binary = tool("prometheus")
    port = free_port()
    config = directory / "prometheus.yml"
    jobs = "".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        for name, target in targets.items()
    )
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n" + jobs
    )
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = spawn("prometheus", command, dict(os.environ), directory)
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_http("Prometheus", f"{server.base}/-/ready", process)

        def targets_up() -> bool:
            response = requests.get(f"{server.base}/api/v1/targets", timeout=10)
            found = response.json()["data"]["activeTargets"]
            return len(found) == len(targets) and all(t["health"] == "up" for t in found)

        poll("the Prometheus targets to be up", targets_up)
        yield server
    finally:
        process.stop()
        print(f"----- prometheus ({process.log_path}) -----\n{process.tail(40)}")
