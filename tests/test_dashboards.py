"""The Grafana dashboards (helm/cirelay/dashboards/*.json, from dashboards/generate.py) and the
chart's alerts, proven against a real Prometheus.

- The committed JSON is what the generator writes, each dashboard has its ``datasource`` and
  ``job`` variables, and every panel's queries use both.
- The chart renders one ConfigMap per dashboard, labelled for the Grafana sidecar, holding
  exactly the committed JSON; none without ``grafanaDashboards.enabled``.
- **Every panel proven**: the whole stack runs as real processes (the emulator, ``cirelay
  serve`` with two workers, ``cirelay worker``), a Prometheus server scrapes it while it
  processes a mixed load: jobs submitted (one refused by CI with a 503), notifications
  accepted, duplicated and invalid (quarantined), deliveries to a healthy subscriber and to
  one that fails until its deliveries are given up. Then every panel's every query, with the
  variables as Grafana fills them, is evaluated through Prometheus' HTTP API: each parses and
  returns at least one series with a finite value.
- The same for the chart's alert expressions (rendered with selectors for this scrape): each
  parses, and its measured side (the expression without its threshold) returns data. Whether
  they fire or not is tested by ``promtool test rules`` (tests/helm/alerts_test.yaml).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from dashboards import generate
from tests.conftest import job_json
from tests.e2e_stack import Stack, poll
from tests.helm.test_chart import CHART, PRODUCTION_VALUES, load_yaml, merge, render, rule_groups
from tests.prometheus_server import Prometheus, running_prometheus
from tests.subscriber import Answer, Subscriber

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = CHART / "dashboards"
#: the scrape job of the service in this test; the alerts' selectors name it
JOB = "cirelay"
#: how Grafana fills the variables when "All" jobs are chosen, and the rate interval
VARIABLES = {"$job": ".*", "$__rate_interval": "1m"}
#: the alerts whose series cirelay does not produce (kube-state-metrics does)
KUBE_ALERTS = {"CirelayPodNotReady"}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every query of every panel."""
    return [
        (board["title"], panel["title"], target["expr"])
        for board in dashboards().values()
        for panel in board["panels"]
        for target in panel["targets"]
    ]


def filled(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


# --- the JSON and the chart -----------------------------------------------------------------


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    written = generate.render()
    assert sorted(written) == sorted(dashboards())
    for name, text in written.items():
        assert (DASHBOARDS / name).read_text() == text, f"run `make dashboards` ({name})"


def test_every_dashboard_has_the_datasource_and_job_variables_and_every_query_uses_them() -> None:
    boards = dashboards()
    assert {b["title"] for b in boards.values()} == {
        "cirelay / ingest", "cirelay / jobs", "cirelay / delivery", "cirelay / serving",
        "cirelay / database",
    }  # fmt: skip
    for board in boards.values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["job"]["includeAll"] and variables["job"]["multi"]
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), panel["title"]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def test_the_chart_ships_one_labelled_configmap_per_dashboard(chart: helm.Chart) -> None:
    release = render(chart, load_yaml(PRODUCTION_VALUES))
    maps = {m["metadata"]["name"]: m for m in release.all("ConfigMap") if "-dashboard-" in
            m["metadata"]["name"]}  # fmt: skip
    assert sorted(maps) == sorted(f"rel-cirelay-dashboard-{n.removesuffix('.json')}"
                                  for n in dashboards())  # fmt: skip
    for name, board in dashboards().items():
        found = maps[f"rel-cirelay-dashboard-{name.removesuffix('.json')}"]
        assert found["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert found["metadata"]["annotations"] == {"grafana_folder": "cirelay"}
        assert json.loads(found["data"][f"cirelay-{name}"]) == board

    assert not [m for m in render(chart).all("ConfigMap") if "-dashboard-" in
                m["metadata"]["name"]]  # off by default  # fmt: skip


# --- every panel and every alert expression, against real series ------------------------------


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """The stack after a mixed load, scraped by Prometheus (job ``cirelay``)."""
    directory = tmp_path_factory.mktemp("dashboards")
    env = {
        "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8",
        "CIRELAY_DELIVERY_RETRY_SCHEDULE": "0.2,0.2",  # the third failure gives up
    }
    with (
        Stack.start(directory / "stack", env) as stack,
        Subscriber() as healthy,
        Subscriber() as failing,
    ):
        try:
            failing.answer = lambda n, request: Answer(status=500)
            for hook in (healthy, failing):
                body = {"url": hook.url(), "event_types": ["*"]}
                created = stack.http.post(f"{stack.base}/v1/subscriptions", json=body,
                                          headers=stack.auth)  # fmt: skip
                assert created.status_code == 201, created.text
            (directory / "prometheus").mkdir()
            with running_prometheus({JOB: stack.service_port}, directory / "prometheus") as server:
                mixed_load(stack)
                yield server
        except BaseException:
            print(stack.tails())
            raise


def mixed_load(stack: Stack) -> None:
    # CI refuses one submit (503); duplicates two notifications; breaks one (an unknown
    # State: quarantined as a schema violation, then the good one arrives)
    stack.faults({"create_5xx": {"next": 1}, "duplicate": {"next": 2, "copies": 2},
                  "malformed": {"next": 1, "kind": "invalid"}})  # fmt: skip
    refused = stack.post_job(job_json())
    assert refused.status_code >= 500, refused.text
    jobs = [stack.submit(job_json()) for _ in range(4)]
    for job in jobs:
        stack.wait_final(job["id"])
    poll("duplicates and a quarantined notification", lambda: (
        stack.metric("cirelay_notifications_total", '{outcome="duplicate"}') >= 2
        and stack.metric("cirelay_notifications_total", '{outcome="schema_violation"}') >= 1
    ))  # fmt: skip
    poll("deliveries given up", lambda: (
        stack.metric("cirelay_deliveries_total", '{outcome="given_up"}') >= 1
        and stack.metric("cirelay_deliveries_total", '{outcome="delivered"}') >= len(jobs)
    ), deadline=60)  # fmt: skip


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def returns_data(prometheus: Prometheus, promql: str, what: str) -> list[dict[str, Any]]:
    """Poll until the query answers with a finite value (Prometheus needs two scrapes in
    the rate window); fail with its last answer otherwise."""
    last: list[dict[str, Any]] = []

    def probe() -> bool:
        answer = prometheus.answer(promql)
        assert answer["status"] == "success", f"{what}: {promql}\n{answer}"  # it parses
        last[:] = answer["data"]["result"]
        return has_finite_value(last)

    try:
        poll(what, probe, deadline=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{promql}\nlast answer: {last}") from None
    return last


@pytest.mark.slow
@pytest.mark.parametrize(("board", "panel", "expr"), panel_queries(),
                         ids=[f"{b}:{p}" for b, p, _ in panel_queries()])  # fmt: skip
def test_every_panel_query_returns_data(
    loaded: Prometheus, board: str, panel: str, expr: str
) -> None:
    """Data, and grouped by labels the series really carry: ``sum by (tag)`` over a metric
    without a ``tag`` label still answers (one series, no tag), and would show nothing."""
    result = returns_data(loaded, filled(expr), f"{board} / {panel}")
    grouped = {label.strip() for by in re.findall(r"by \(([^)]*)\)", expr)
               for label in by.split(",")} - {"le", ""}  # fmt: skip
    missing = {label for label in grouped if not any(label in r["metric"] for r in result)}
    assert not missing, f"{board} / {panel}: no series carries {sorted(missing)}: {result}"


def alert_rules(chart: helm.Chart) -> dict[str, str]:
    """Alert name -> expression, rendered for this scrape (every series is job ``cirelay``:
    the worker shares the service's multiprocess directory, as under ``cirelay up``)."""
    values = merge(load_yaml(PRODUCTION_VALUES), {"prometheusRule": {
        "metricSelector": f'job="{JOB}"', "workerMetricSelector": f'job="{JOB}"',
    }})  # fmt: skip
    (group,) = rule_groups(render(chart, values))
    return {r["alert"]: r["expr"] for r in group["rules"]}


def test_the_alert_rules_cover_every_alert(chart: helm.Chart) -> None:
    assert set(alert_rules(chart)) == {
        "CirelayNotificationsRejected", "CirelayDeliveryBacklogStale",
        "CirelaySubscriptionsDisabled", "CirelayDeliveriesGivenUp", "CirelayPodNotReady",
    }  # fmt: skip


@pytest.mark.slow
def test_every_alert_expression_parses_and_its_measure_returns_data(
    loaded: Prometheus, chart: helm.Chart
) -> None:
    threshold = re.compile(r"^(?P<measure>.*?)\s*>\s*[0-9.]+\s*$", re.S)
    for name, expr in alert_rules(chart).items():
        answer = loaded.answer(expr)
        assert answer["status"] == "success", f"{name}: {expr}\n{answer}"
        if name in KUBE_ALERTS:
            continue  # kube-state-metrics' series: promtool's unit tests cover it
        found = threshold.match(expr)
        assert found, f"{name}: no threshold to strip in {expr}"
        returns_data(loaded, found["measure"], name)
