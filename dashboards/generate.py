"""cirelay's Grafana dashboards, built with Grafana's own SDK (grafana-foundation-sdk).

    python dashboards/generate.py          # (make dashboards) writes helm/cirelay/dashboards/*.json
    python dashboards/generate.py --check  # exits 1 if a committed file differs

The JSON is committed in ``helm/cirelay/dashboards/`` (the chart's ConfigMaps read it there,
``templates/dashboards.yaml``; people without the Grafana sidecar import it from there).
tests/test_dashboards.py evaluates every panel's query against a real Prometheus scraping
a cirelay that processed a mixed load, and checks the committed JSON is what this script
writes.

Every dashboard has two variables: ``datasource`` (a Prometheus data source) and ``job``
(the scrape jobs of cirelay's web pods and workers, all by default). Queries aggregate with
``by (label)``; tests/test_dashboards.py checks that every label a query groups by is on
the series it returns.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

OUT = Path(__file__).resolve().parents[1] / "helm" / "cirelay" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
#: the selector every query carries
JOB = 'job=~"$job"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"


def quantiles(metric: str, by: str = "") -> tuple[Query, ...]:
    """p50, p95 and p99 of a histogram over the rate interval."""
    labels = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({labels}) "
            f"(rate({metric}_bucket{{{JOB}}}[{RATE}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in (0.5, 0.95, 0.99)
    )


def per_second(metric: str, by: str, where: str = "") -> Query:
    selector = f"{JOB}, {where}" if where else JOB
    legend = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(","))
    return Query(f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))", legend)


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "ingest": ("cirelay / ingest", [
        Panel("Notifications by outcome", "CI notifications received per second, by outcome"
              " (accepted, duplicate, and every rejection).",
              (per_second("cirelay_notifications_total", "outcome"),), "reqps"),
        Panel("Notifications by tag", "CI notifications per second by the job's tag (known"
              " tags, `workflow`, else `other`) and outcome.",
              (per_second("cirelay_notifications_by_tag_total", "tag, outcome"),), "reqps"),
        Panel("Processing latency", "From a notification's arrival to its answer (parse,"
              " validate, group commit): quantiles of the histogram.",
              quantiles("cirelay_notification_processing_seconds"), "s"),
        Panel("Quarantine size", "Quarantined notifications not yet replayed successfully"
              " (`cirelay quarantine list`).",
              (Query(f"max(cirelay_quarantine_size{{{JOB}}})", "quarantined"),), kind="stat"),
        Panel("Quarantine writes dropped", "Invalid notifications answered 400 but not stored"
              " (CIRELAY_QUARANTINE_PER_MINUTE reached), by source.",
              (per_second("cirelay_quarantine_dropped_total", "source"),), "reqps"),
    ]),
    "jobs": ("cirelay / jobs", [
        Panel("State transitions", "Job state changes recorded per second.",
              (per_second("cirelay_job_state_transitions_total", "from_state, to_state"),),
              "ops"),
        Panel("CI job duration", "Durations CI reports for finished jobs (EndTime -"
              " CreationTime), by final state.",
              quantiles("cirelay_ci_job_duration_seconds", "state"), "s"),
        Panel("CI API requests by outcome", "HTTP requests to CI per second.",
              (per_second("cirelay_ci_requests_total", "operation, outcome"),), "reqps"),
        Panel("CI API errors", "Requests to CI that did not end ok (rejected, unavailable,"
              " timeout, error), per second.",
              (per_second("cirelay_ci_requests_total", "operation, outcome",
                          'outcome!="ok"'),), "reqps"),
        Panel("CI API latency", "Time of one HTTP request to CI.",
              quantiles("cirelay_ci_request_duration_seconds", "operation"), "s"),
    ]),
    "delivery": ("cirelay / delivery", [
        Panel("Attempts by result and transport", "Delivery attempts per second (transport:"
              " http, nats, amqp).",
              (per_second("cirelay_delivery_attempts_total", "result, transport"),), "reqps"),
        Panel("Deliveries finished", "Delivered, given up, and subscriptions disabled, per"
              " second.", (per_second("cirelay_deliveries_total", "outcome"),), "ops"),
        Panel("Delivery latency", "From the state change's commit to the subscriber's 2xx"
              " (or the broker's ack), by transport.",
              quantiles("cirelay_delivery_latency_seconds", "transport"), "s"),
        Panel("Attempts per delivery", "Attempts a finished delivery took.",
              quantiles("cirelay_delivery_attempts_per_delivery"), "short"),
        Panel("Backlog", "Deliveries pending (first attempt or retry) for enabled"
              " subscriptions.",
              (Query(f"max(cirelay_delivery_backlog{{{JOB}}})", "pending"),)),
        Panel("Oldest pending delivery", "Age of the oldest pending delivery (alert:"
              " CirelayDeliveryBacklogStale).",
              (Query(f"max(cirelay_delivery_backlog_oldest_age_seconds{{{JOB}}})", "age"),),
              "s", "stat"),
        Panel("Disabled subscriptions", "Subscriptions disabled by hand or for failing"
              " (alert: CirelaySubscriptionsDisabled).",
              (Query(f"max(cirelay_subscriptions_disabled{{{JOB}}})", "disabled"),),
              kind="stat"),
    ]),
    "serving": ("cirelay / serving", [
        Panel("Requests by status", "HTTP requests answered per second, by method and code.",
              (per_second("cirelay_http_requests_total", "method, code"),), "reqps"),
        Panel("Request latency", "From a request's arrival to the end of its answer.",
              quantiles("cirelay_http_request_duration_seconds"), "s"),
        Panel("Event streams", "Clients connected to GET /v1/events/stream.",
              (Query(f"sum(cirelay_sse_clients{{{JOB}}})", "streams"),), kind="stat"),
        Panel("Worker CPU", "CPU seconds per second of each process (gunicorn workers by"
              " pid, and the delivery worker).",
              (per_second("process_cpu_seconds_total", "job, instance, pid"),), "percentunit"),
        Panel("Worker memory", "Resident memory of each process.",
              (Query(f"max by (job, instance, pid) (process_resident_memory_bytes{{{JOB}}})",
                     "{{job}} {{instance}} {{pid}}"),), "bytes"),
        Panel("Targets up", "Scrape targets answering.",
              (Query(f"sum by (job) (up{{{JOB}}})", "{{job}}"),), kind="stat"),
    ]),
    "database": ("cirelay / database", [
        Panel("Connections in use", "Database connections checked out of the pools, per job.",
              (Query(f"sum by (job) (cirelay_db_connections_in_use{{{JOB}}})", "{{job}}"),)),
        Panel("Commit batch size", "Notifications committed together in one transaction"
              " (group commit): larger under load.",
              quantiles("cirelay_commit_batch_size"), "short"),
        Panel("Commits per second", "Group-commit transactions per second.",
              (Query(f"sum(rate(cirelay_commit_batch_size_count{{{JOB}}}[{RATE}]))",
                     "commits"),), "ops"),
    ]),
}  # fmt: skip


def build(name: str, title: str, panels: list[Panel]) -> dict[str, object]:
    board = (
        db.Dashboard(title)
        .uid(f"cirelay-{name}")
        .tags(["cirelay"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            db.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            db.QueryVariable("job")
            .label("Job")
            .datasource(DATASOURCE)
            .query('label_values(up{job=~".*cirelay.*"}, job)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for number, panel in enumerate(panels, start=1):
        builder: timeseries.Panel | stat.Panel
        if panel.kind == "timeseries":
            builder = (
                timeseries.Panel()
                .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                        .placement(LegendPlacement.BOTTOM).show_legend(True))
                .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI)
                         .sort(SortOrder.DESCENDING))
            )  # fmt: skip
        else:
            builder = stat.Panel().reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        builder = (
            builder.id(number)
            .title(panel.title)
            .description(panel.description)
            .datasource(DATASOURCE)
            .unit(panel.unit)
            .height(8)
            .span(8 if panel.kind == "stat" else 12)
        )
        for index, query in enumerate(panel.queries):
            target = prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
            builder = builder.with_target(target.range().ref_id(chr(ord("A") + index)))
        board = board.with_panel(builder)
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render() -> dict[str, str]:
    """File name -> JSON text, for every dashboard."""
    return {
        f"{name}.json": json.dumps(build(name, title, panels), indent=2, sort_keys=True) + "\n"
        for name, (title, panels) in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (OUT / n).is_file()
                 or (OUT / n).read_text() != text]  # fmt: skip
        for name in stale:
            print(f"{OUT / name} is not what dashboards/generate.py writes", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
