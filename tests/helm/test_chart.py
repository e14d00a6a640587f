"""The Helm chart in helm/cirelay, checked without a helm binary.

Helm's own Go code (helm-python-sdk) lints the chart and renders it, which also enforces
values.schema.json; kubernetes-validate checks every rendered manifest against the Kubernetes
1.30 OpenAPI schemas (the chart's minimum, ``kubeVersion`` in Chart.yaml) in strict mode, so a
misspelt or misplaced field fails; the Prometheus Operator objects, which those schemas do not
carry, are checked field by field; promtool checks the alert rules and runs the unit tests in
alerts_test.yaml against them.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

HERE = Path(__file__).parent
CHART = HERE.parents[1] / "helm" / "cirelay"
PRODUCTION_VALUES = CHART / "values-production.yaml"
KUBE_VERSION = "1.30.0"  # Chart.yaml: kubeVersion >=1.30.0-0
RELEASE = "rel"
NAMESPACE = "prod"
FULLNAME = f"{RELEASE}-cirelay"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
SECRET_ENV = (
    "CIRELAY_DATABASE_URL",
    "CIRELAY_API_KEYS",
    "CIRELAY_CALLBACK_KEYS",
    "CIRELAY_QUEUE_CALLBACK_SECRET",
    "CIRELAY_CI_SECRET_ID",
    "CIRELAY_CI_SECRET_KEY",
    "CIRELAY_BROKER_CREDENTIALS",
)
# Distinctive secret values: none of them may leak into a ConfigMap.
SECRETS = {
    "databaseUrl": "postgresql://cirelay:pg-password-4f1c@db.internal:5432/cirelay",
    "apiKeys": ["api-key-one-8e2d41", "api-key-two-93af07"],
    "callbackKeys": ["callback-key-new-5b7e0c9d", "callback-key-old-1a2b3c4d"],
    "queueCallbackSecret": "queue-secret-6d5c4b3a2f1e",
    "ciSecretId": "AKIDsecret-id-7c6b5a",
    "ciSecretKey": "ci-secret-key-0f9e8d7c",
    "brokerCredentials": ["rabbit=relay:amqp-pass-2b9e", "nats=nats-token-71c3"],
}


@dataclass
class Release:
    """One rendering of the chart: template path -> text, and the parsed objects."""

    files: dict[str, str]
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(o["metadata"]["name"] == name for o in self.all(kind))

    @property
    def notes(self) -> str:
        return next(text for path, text in self.files.items() if path.endswith("NOTES.txt"))


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Release:
    files = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = [
        doc
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return Release(files, objects)


def pod_specs(release: Release) -> list[tuple[str, dict[str, Any]]]:
    """(Deployment or Job name, pod spec) of every workload."""
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in release.objects
        if o["kind"] in {"Deployment", "Job"}
    ]


def container(release: Release, component: str) -> dict[str, Any]:
    kind = "Job" if component == "migration" else "Deployment"
    spec = release.get(kind, f"{FULLNAME}-{component}")["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    assert isinstance(only, dict)
    return only


def config_data(release: Release) -> dict[str, str]:
    data = release.get("ConfigMap", FULLNAME)["data"]
    assert isinstance(data, dict)
    return data


def secret_data(release: Release, name: str = FULLNAME) -> dict[str, str]:
    encoded = release.get("Secret", name).get("data") or {}
    return {key: base64.b64decode(value).decode() for key, value in encoded.items()}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def leaf_keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf: scalars, lists and empty maps (lists are not entered)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaf_keys(value, f"{path}.")
        else:
            yield path


# --- fixtures: load the chart once, render each values set once ----------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def production_values() -> dict[str, Any]:
    return load_yaml(PRODUCTION_VALUES)


@pytest.fixture(scope="module")
def default(chart: helm.Chart) -> Release:
    return render(chart)


@pytest.fixture(scope="module")
def production(chart: helm.Chart, production_values: dict[str, Any]) -> Release:
    return render(chart, production_values)


@pytest.fixture(scope="module")
def with_secrets(chart: helm.Chart) -> Release:
    return render(chart, {"secrets": SECRETS})


@pytest.fixture(params=["default", "production"])
def any_release(request: pytest.FixtureRequest) -> Release:
    release = request.getfixturevalue(request.param)
    assert isinstance(release, Release)
    return release


# --- Helm: lint, render, schema ------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_helm_lint_is_clean(values_file: Path | None) -> None:
    values = load_yaml(values_file) if values_file else None
    report = helm.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["errors"] == []
    # Severity 1 is INFO ("icon is recommended"): the chart has no icon to point at.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_release_has_every_workload(default: Release) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in default.objects}
    assert kinds == {
        ("ServiceAccount", FULLNAME),
        ("ConfigMap", FULLNAME),
        ("Secret", FULLNAME),
        ("Service", FULLNAME),
        ("Deployment", f"{FULLNAME}-web"),
        ("Deployment", f"{FULLNAME}-worker"),
        ("PodDisruptionBudget", f"{FULLNAME}-web"),
        ("PodDisruptionBudget", f"{FULLNAME}-worker"),
        ("NetworkPolicy", f"{FULLNAME}-web"),
        ("NetworkPolicy", f"{FULLNAME}-worker"),
        ("ConfigMap", f"{FULLNAME}-migration"),
        ("Secret", f"{FULLNAME}-migration"),
        ("NetworkPolicy", f"{FULLNAME}-migration"),
        ("Job", f"{FULLNAME}-migration"),
    }


def test_production_release_adds_ingress_autoscaling_and_monitoring(production: Release) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in production.objects}
    assert {
        ("Ingress", FULLNAME),
        ("HorizontalPodAutoscaler", f"{FULLNAME}-web"),
        ("ServiceMonitor", FULLNAME),
        ("PodMonitor", f"{FULLNAME}-worker"),
        ("PrometheusRule", FULLNAME),
    } <= kinds
    assert not production.all("Secret")  # existingSecret


def test_manifests_match_the_kubernetes_schemas(any_release: Release) -> None:
    checked = 0
    for obj in any_release.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 10


def test_every_object_is_namespaced_and_labelled(any_release: Release) -> None:
    for obj in any_release.objects:
        meta = obj["metadata"]
        assert meta["namespace"] == NAMESPACE, meta["name"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "cirelay"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "cirelay-0.1.0"
        assert len(meta["name"]) <= 63


@pytest.mark.parametrize(
    "bad",
    [
        {"web": {"replicaCount": "three"}},
        {"worker": {"resources": {"limits": {"memory": "lots"}}}},
        {"replicas": 3},  # a typo for web.replicaCount: unknown top-level keys are refused
        {"secrets": {"databaseUrl": "sqlite:////tmp/cirelay.db"}},
        {"secrets": {"callbackKeys": ["short"]}},
        {"config": {"logLevel": "loud"}},
        {"config": {"publicUrl": "cirelay.example.com"}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"prometheusRule": {"alerts": {"notReady": {"for": "five minutes"}}}},
        {"worker": {"metrics": {"port": 70000}}},
        {"worker": {"metrics": {"enabled": "yes"}}},
        {"prometheusRule": {"alerts": {"deliveriesGivenUp": {"threshold": -1}}}},
    ],
    ids=lambda bad: json.dumps(bad, separators=(",", ":")),
)
def test_schema_rejects_bad_values(chart: helm.Chart, bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(chart, bad)
    assert helm.lint(CHART, bad)["errors"]


def test_schema_accepts_the_shipped_values_files(production_values: dict[str, Any]) -> None:
    # Helm validates the merged values; check the files on their own too (jsonschema), so a key
    # that only the production file sets cannot slip past an optional schema branch.
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = load_yaml(CHART / "values.yaml")
    assert list(validator.iter_errors(defaults)) == []
    assert list(validator.iter_errors(merge(defaults, production_values))) == []


def test_autoscaling_bounds_are_checked(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="maxReplicas"):
        render(
            chart, {"web": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 1}}}
        )


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"extra": {"PROMETHEUS_MULTIPROC_DIR": "/tmp/m"}}},
        {"worker": {"extraEnv": [{"name": "PROMETHEUS_MULTIPROC_DIR", "value": "/tmp/m"}]}},
    ],
    ids=["config.extra", "worker.extraEnv"],
)
def test_worker_metrics_refuse_a_multiprocess_dir(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    # `cirelay worker --metrics-port` exits when PROMETHEUS_MULTIPROC_DIR is set.
    with pytest.raises(helm.HelmRenderError, match="PROMETHEUS_MULTIPROC_DIR"):
        render(chart, values)
    render(chart, merge(values, {"worker": {"metrics": {"enabled": False}}}))


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    keys = list(leaf_keys(load_yaml(CHART / "values.yaml")))
    assert len(keys) > 100
    missing = [key for key in keys if f"`{key}`" not in readme]
    assert missing == []


# --- pods: security, probes, components ------------------------------------------------------


def test_pods_run_restricted(any_release: Release) -> None:
    specs = pod_specs(any_release)
    assert {name for name, _ in specs} == {
        f"{FULLNAME}-web",
        f"{FULLNAME}-worker",
        f"{FULLNAME}-migration",
    }
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == 10001, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["privileged"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], name
            assert c["resources"]["requests"] and c["resources"]["limits"], name


def test_web_serves_http_with_probes(default: Release) -> None:
    web = container(default, "web")
    assert web["args"] == ["serve"]
    assert web["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in web["env"]}
    assert env["CIRELAY_BIND"] == "0.0.0.0:8080"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert web["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert web["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    spec = default.get("Deployment", f"{FULLNAME}-web")["spec"]["template"]["spec"]
    # gunicorn's graceful_timeout is 30 s, after the preStop sleep.
    assert (
        spec["terminationGracePeriodSeconds"]
        >= 30 + web["lifecycle"]["preStop"]["sleep"]["seconds"]
    )


def test_worker_serves_metrics_and_is_probed_on_that_port(default: Release) -> None:
    worker = container(default, "worker")
    assert worker["args"] == ["worker"]
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env == {"CIRELAY_WORKER_METRICS_PORT": "9090"}
    # A TCP connect: GET /metrics reads the database, and a database outage must not restart
    # the workers.
    probe = worker["livenessProbe"]
    assert probe["tcpSocket"] == {"port": "metrics"}
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 30
    # Nothing routes to the worker: no readiness.
    assert "readinessProbe" not in worker


def test_worker_metrics_port_probe_and_env_are_configurable(chart: helm.Chart) -> None:
    release = render(
        chart,
        {
            "worker": {
                "metrics": {"port": 9400},
                "livenessProbe": {
                    "tcpSocket": None,
                    "httpGet": {"path": "/metrics", "port": "metrics"},
                    "failureThreshold": 5,
                },
                "extraEnv": [{"name": "CIRELAY_DELIVERY_POLL_SECONDS", "value": "0.5"}],
            }
        },
    )
    worker = container(release, "worker")
    assert worker["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert worker["env"] == [
        {"name": "CIRELAY_WORKER_METRICS_PORT", "value": "9400"},
        {"name": "CIRELAY_DELIVERY_POLL_SECONDS", "value": "0.5"},
    ]
    probe = worker["livenessProbe"]
    assert "tcpSocket" not in probe
    assert probe["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert probe["failureThreshold"] == 5
    kubernetes_validate.validate(
        release.get("Deployment", f"{FULLNAME}-worker"), KUBE_VERSION, strict=True
    )
    unprobed = render(chart, {"worker": {"livenessProbe": None}})
    assert "livenessProbe" not in container(unprobed, "worker")
    assert container(unprobed, "worker")["ports"][0]["name"] == "metrics"


def test_worker_metrics_can_be_disabled(
    chart: helm.Chart, production_values: dict[str, Any]
) -> None:
    release = render(
        chart,
        merge(
            production_values,
            {"worker": {"metrics": {"enabled": False}, "extraEnv": [{"name": "A", "value": "1"}]}},
        ),
    )
    worker = container(release, "worker")
    assert "ports" not in worker
    assert worker["env"] == [{"name": "A", "value": "1"}]
    assert "livenessProbe" not in worker  # nothing left to probe
    assert not release.all("PodMonitor")
    assert release.has("ServiceMonitor", FULLNAME)  # the web scrape stays
    policy = release.get("NetworkPolicy", f"{FULLNAME}-worker")["spec"]
    assert "Ingress" in policy["policyTypes"] and not policy.get("ingress")
    (group,) = rule_groups(release)
    alerts = {r["alert"] for r in group["rules"]}
    assert "CirelayDeliveriesGivenUp" not in alerts
    assert "CirelayDeliveryBacklogStale" in alerts
    without_extra_env = render(chart, {"worker": {"metrics": {"enabled": False}}})
    assert "env" not in container(without_extra_env, "worker")


def test_web_and_worker_scale_and_size_separately(chart: helm.Chart) -> None:
    release = render(
        chart,
        {
            "web": {"replicaCount": 4, "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
            "worker": {"replicaCount": 2, "resources": {"requests": {"cpu": "150m"}}},
        },
    )
    web = release.get("Deployment", f"{FULLNAME}-web")
    worker = release.get("Deployment", f"{FULLNAME}-worker")
    assert web["spec"]["replicas"] == 4
    assert worker["spec"]["replicas"] == 2
    assert container(release, "web")["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert container(release, "worker")["resources"]["requests"]["cpu"] == "150m"
    assert container(release, "worker")["resources"]["requests"]["memory"] == "128Mi"


def test_selectors_keep_components_apart(any_release: Release) -> None:
    def selector(obj: dict[str, Any]) -> dict[str, str]:
        spec = obj["spec"]
        labels: dict[str, str] = (
            spec["selector"] if obj["kind"] == "Service" else spec["selector"]["matchLabels"]
        )
        return labels

    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in any_release.all("Deployment")
    }
    web, worker = pods[f"{FULLNAME}-web"], pods[f"{FULLNAME}-worker"]
    for obj in [
        any_release.get("Service", FULLNAME),
        any_release.get("Deployment", f"{FULLNAME}-web"),
        any_release.get("PodDisruptionBudget", f"{FULLNAME}-web"),
    ]:
        assert selector(obj).items() <= web.items()
        assert not selector(obj).items() <= worker.items()
    for obj in [
        any_release.get("Deployment", f"{FULLNAME}-worker"),
        any_release.get("PodDisruptionBudget", f"{FULLNAME}-worker"),
    ]:
        assert selector(obj).items() <= worker.items()
        assert not selector(obj).items() <= web.items()


def test_service_targets_the_web_port(default: Release) -> None:
    (port,) = default.get("Service", FULLNAME)["spec"]["ports"]
    assert port["targetPort"] == "http"
    assert port["name"] == "http"


def test_production_autoscales_web_and_runs_two_workers(production: Release) -> None:
    hpa = production.get("HorizontalPodAutoscaler", f"{FULLNAME}-web")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULLNAME}-web",
    }
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # The HPA owns the web replica count; the worker keeps its own.
    assert "replicas" not in production.get("Deployment", f"{FULLNAME}-web")["spec"]
    assert production.get("Deployment", f"{FULLNAME}-worker")["spec"]["replicas"] == 2
    assert not production.has("HorizontalPodAutoscaler", f"{FULLNAME}-worker")


def test_topology_spread_is_templated(production: Release) -> None:
    spec = production.get("Deployment", f"{FULLNAME}-web")["spec"]["template"]["spec"]
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "cirelay",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "web",
        }


# --- configuration and secrets ---------------------------------------------------------------


def test_configmap_carries_the_settings(default: Release) -> None:
    data = config_data(default)
    assert data == {
        "CIRELAY_PUBLIC_URL": f"http://{FULLNAME}.{NAMESPACE}.svc",
        "CIRELAY_CI_BUCKET": "",
        "CIRELAY_CI_REGION": "",
        "CIRELAY_PROXY_HOPS": "0",
        "CIRELAY_WORKERS": "2",
        "CIRELAY_THREADS": "16",
        "CIRELAY_LOG_LEVEL": "info",
        "CIRELAY_LOG_FORMAT": "json",
        "CIRELAY_RECONCILE_AFTER_SECONDS": "300",
        "CIRELAY_RECONCILE_INTERVAL_SECONDS": "30",
    }


def test_production_configmap(production: Release) -> None:
    data = config_data(production)
    assert data["CIRELAY_PUBLIC_URL"] == "https://cirelay.example.com"
    assert data["CIRELAY_PROXY_HOPS"] == "1"
    # Unset delivery settings leave the application's defaults alone.
    assert not [key for key in data if key.startswith("CIRELAY_DELIVERY_")]


def test_numbers_render_without_exponents(chart: helm.Chart) -> None:
    # YAML numbers reach the templates as float64: 2097152 must not become "2.097152e+06".
    values = {
        "config": {
            "deliveryRetrySchedule": [0.5, 30, 86400],
            "deliveryDisableAfterSeconds": 259200,
            "deliveryTimeoutSeconds": 7.5,
            "deliveryConcurrency": 32,
            "extra": {"CIRELAY_MAX_BODY_BYTES": 2097152, "CIRELAY_DELIVERY_POLL_SECONDS": 0.05},
        }
    }
    data = config_data(render(chart, values))
    assert data["CIRELAY_DELIVERY_RETRY_SCHEDULE"] == "0.5,30,86400"
    assert data["CIRELAY_DELIVERY_DISABLE_AFTER_SECONDS"] == "259200"  # not 2.592e+05
    assert data["CIRELAY_DELIVERY_TIMEOUT_SECONDS"] == "7.5"
    assert data["CIRELAY_DELIVERY_CONCURRENCY"] == "32"
    assert data["CIRELAY_MAX_BODY_BYTES"] == "2097152"
    assert data["CIRELAY_DELIVERY_POLL_SECONDS"] == "0.05"


def test_public_url_and_proxy_hops_follow_the_ingress(chart: helm.Chart) -> None:
    ingress = {
        "enabled": True,
        "hosts": [{"host": "relay.example.org", "paths": [{"path": "/v1"}]}],
        "tls": [{"secretName": "relay-tls", "hosts": ["relay.example.org"]}],
    }
    data = config_data(render(chart, {"ingress": ingress}))
    assert data["CIRELAY_PUBLIC_URL"] == "https://relay.example.org"
    assert data["CIRELAY_PROXY_HOPS"] == "1"
    data = config_data(render(chart, {"ingress": {**ingress, "tls": []}}))
    assert data["CIRELAY_PUBLIC_URL"] == "http://relay.example.org"


def test_secrets_go_to_the_secret_and_never_to_a_configmap(with_secrets: Release) -> None:
    expected = {
        "CIRELAY_DATABASE_URL": SECRETS["databaseUrl"],
        "CIRELAY_API_KEYS": ",".join(SECRETS["apiKeys"]),
        "CIRELAY_CALLBACK_KEYS": ",".join(SECRETS["callbackKeys"]),
        "CIRELAY_QUEUE_CALLBACK_SECRET": SECRETS["queueCallbackSecret"],
        "CIRELAY_CI_SECRET_ID": SECRETS["ciSecretId"],
        "CIRELAY_CI_SECRET_KEY": SECRETS["ciSecretKey"],
        "CIRELAY_BROKER_CREDENTIALS": ",".join(SECRETS["brokerCredentials"]),
    }
    assert secret_data(with_secrets) == expected
    assert secret_data(with_secrets, f"{FULLNAME}-migration") == expected
    needles = [v for v in SECRETS.values() if isinstance(v, str)]
    needles += [k for v in SECRETS.values() if isinstance(v, list) for k in v]
    needles += [base64.b64encode(n.encode()).decode() for n in needles]
    configmaps = with_secrets.all("ConfigMap")
    assert len(configmaps) == 2
    for cm in configmaps:
        text = json.dumps(cm)
        assert not [n for n in needles if n in text], cm["metadata"]["name"]
        assert not set(cm["data"]) & set(SECRET_ENV)
    # Nor in the pod specs or in NOTES.
    for obj in with_secrets.objects:
        if obj["kind"] in {"Deployment", "Job"}:
            assert not [n for n in needles if n in json.dumps(obj)]
    assert not [n for n in needles if n in with_secrets.notes]


def test_pods_read_config_and_secret(with_secrets: Release) -> None:
    for component in ("web", "worker"):
        assert container(with_secrets, component)["envFrom"] == [
            {"configMapRef": {"name": FULLNAME}},
            {"secretRef": {"name": FULLNAME}},
        ]
    assert container(with_secrets, "migration")["envFrom"] == [
        {"configMapRef": {"name": f"{FULLNAME}-migration"}},
        {"secretRef": {"name": f"{FULLNAME}-migration"}},
    ]


def test_existing_secret_replaces_the_charts_secret(production: Release) -> None:
    assert not production.all("Secret")
    for component in ("web", "worker", "migration"):
        refs = [
            e["secretRef"]["name"]
            for e in container(production, component)["envFrom"]
            if "secretRef" in e
        ]
        assert refs == ["cirelay-secrets"], component
    for deployment in production.all("Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert "checksum/config" in annotations
        assert "checksum/secret" not in annotations  # nothing to hash: the Secret is not ours
    assert "cirelay-secrets" in production.notes


def test_config_and_secret_changes_roll_the_pods(
    chart: helm.Chart, default: Release, with_secrets: Release
) -> None:
    def checksums(release: Release) -> list[dict[str, str]]:
        return [d["spec"]["template"]["metadata"]["annotations"] for d in release.all("Deployment")]

    changed = render(chart, {"config": {"logLevel": "debug"}})
    for before, after, secret in zip(
        checksums(default), checksums(changed), checksums(with_secrets), strict=True
    ):
        assert before["checksum/config"] != after["checksum/config"]
        assert before["checksum/secret"] == after["checksum/secret"]
        assert before["checksum/secret"] != secret["checksum/secret"]


def test_missing_secrets_are_reported_in_notes(default: Release, with_secrets: Release) -> None:
    assert "secrets.databaseUrl" in default.notes
    assert "WARNING" not in with_secrets.notes


# --- migration hook --------------------------------------------------------------------------


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(default: Release) -> None:
    job = default.get("Job", f"{FULLNAME}-migration")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert container(default, "migration")["args"] == ["db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # The release's own ConfigMap, Secret and NetworkPolicies do not exist yet at
    # pre-install: the Job gets hook copies, created before it (lower weight).
    for kind in ("ConfigMap", "Secret", "NetworkPolicy"):
        hook = default.get(kind, f"{FULLNAME}-migration")["metadata"]["annotations"]
        assert hook["helm.sh/hook"] == annotations["helm.sh/hook"]
        assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
        assert "hook-succeeded" in hook["helm.sh/hook-delete-policy"]
    # Nor does the chart's ServiceAccount.
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "default"
    assert config_data(default) == default.get("ConfigMap", f"{FULLNAME}-migration")["data"]


def test_no_other_object_is_a_hook(any_release: Release) -> None:
    for obj in any_release.objects:
        hook = (obj["metadata"].get("annotations") or {}).get("helm.sh/hook")
        assert (hook is not None) == obj["metadata"]["name"].endswith("-migration"), obj["kind"]


def test_migration_can_be_disabled(chart: helm.Chart) -> None:
    release = render(chart, {"migration": {"enabled": False}})
    assert not [o for o in release.objects if o["metadata"]["name"].endswith("-migration")]


# --- network policy and ingress --------------------------------------------------------------


def egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_network_policies(default: Release) -> None:
    web = default.get("NetworkPolicy", f"{FULLNAME}-web")["spec"]
    (rule,) = web["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert "from" not in rule  # CI calls back from the internet
    worker = default.get("NetworkPolicy", f"{FULLNAME}-worker")["spec"]
    # The worker accepts its metrics port only, from where the web port accepts (anywhere).
    (rule,) = worker["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    assert "from" not in rule
    for name in ("web", "worker"):
        assert egress_ports(default.get("NetworkPolicy", f"{FULLNAME}-{name}")) == {
            53,
            5432,
            443,
            80,
        }
    migration = default.get("NetworkPolicy", f"{FULLNAME}-migration")
    assert egress_ports(migration) == {53, 5432}
    assert not migration["spec"].get("ingress")


def test_production_network_policies_restrict_peers(production: Release) -> None:
    web = production.get("NetworkPolicy", f"{FULLNAME}-web")["spec"]
    (rule,) = web["ingress"]
    assert len(rule["from"]) == 2
    # Prometheus, and not the ingress controller, reaches the workers' metrics port.
    worker = production.get("NetworkPolicy", f"{FULLNAME}-worker")["spec"]
    (metrics,) = worker["ingress"]
    assert metrics["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    (prometheus,) = metrics["from"]
    assert prometheus in rule["from"]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    http = next(r for r in web["egress"] if {"protocol": "TCP", "port": 443} in r["ports"])
    assert "169.254.0.0/16" in http["to"][0]["ipBlock"]["except"]


def test_worker_metrics_peers_default_to_the_web_peers(chart: helm.Chart) -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"ipBlock": {"cidr": "10.30.0.0/16"}},
    ]
    release = render(chart, {"networkPolicy": {"web": {"ingressFrom": peers}}})
    worker = release.get("NetworkPolicy", f"{FULLNAME}-worker")
    (rule,) = worker["spec"]["ingress"]
    assert rule == {"ports": [{"protocol": "TCP", "port": "metrics"}], "from": peers}
    kubernetes_validate.validate(worker, KUBE_VERSION, strict=True)


def test_network_policy_can_be_disabled(chart: helm.Chart) -> None:
    assert not render(chart, {"networkPolicy": {"enabled": False}}).all("NetworkPolicy")


def test_production_ingress_publishes_only_callbacks_and_api(production: Release) -> None:
    spec = production.get("Ingress", FULLNAME)["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["cirelay.example.com"], "secretName": "cirelay-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "cirelay.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/callbacks/ci", "/v1"]
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}


#: what answers without an API key: never published by the ingress
KEYLESS_PATHS = ("/metrics", "/healthz", "/readyz")


def _published(path: str, rules: list[dict[str, Any]]) -> bool:
    """Whether a request for ``path`` matches one of the rules' paths (Kubernetes semantics:
    Exact is the whole path, Prefix whole path elements)."""
    for rule in rules:
        for item in rule["http"]["paths"]:
            prefix = item["path"].rstrip("/")
            if item["pathType"] == "Exact" and path == item["path"]:
                return True
            if item["pathType"] == "Prefix" and (
                prefix == "" or path == prefix or path.startswith(prefix + "/")
            ):
                return True
    return False


def test_the_ingress_never_publishes_what_needs_no_key(
    chart: helm.Chart, production: Release
) -> None:
    default_hosts = render(chart, {"ingress": {"enabled": True}})
    for release in (production, default_hosts):
        rules = release.get("Ingress", FULLNAME)["spec"]["rules"]
        assert not [p for p in KEYLESS_PATHS if _published(p, rules)]
        assert _published("/callbacks/ci/queue/x", rules) and _published("/v1/jobs", rules)


@pytest.mark.parametrize(
    "path", ["/", "/metrics", "/healthz", "/readyz", "//metrics", "/readyz/", "/healthz/x"]
)
def test_the_schema_refuses_an_ingress_path_that_would_publish_them(
    chart: helm.Chart, path: str
) -> None:
    paths = [{"path": path, "pathType": "Prefix"}]
    ingress = {"enabled": True, "hosts": [{"host": "relay.example.org", "paths": paths}]}
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"ingress": ingress})


def test_default_has_no_ingress_or_monitoring(default: Release) -> None:
    assert not default.all("Ingress")
    assert not [o for o in default.objects if o["kind"] in CRD_KINDS]
    assert not default.all("HorizontalPodAutoscaler")


# --- Prometheus Operator objects -------------------------------------------------------------


def test_service_monitor(production: Release) -> None:
    sm = production.get("ServiceMonitor", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    service = production.get("Service", FULLNAME)
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert_scrape_endpoint(endpoint)


def assert_scrape_endpoint(endpoint: dict[str, Any]) -> None:
    """Only fields both the ServiceMonitor and the PodMonitor endpoint schemas know, and
    durations Prometheus reads."""
    assert set(endpoint) <= {
        "port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
        "relabelings", "metricRelabelings",
    }  # fmt: skip
    for key in ("interval", "scrapeTimeout"):
        assert endpoint[key][-1] in "smh"


def test_pod_monitor_scrapes_only_the_worker_pods(production: Release) -> None:
    pm = production.get("PodMonitor", f"{FULLNAME}-worker")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == NAMESPACE
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = pm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = spec["selector"]["matchLabels"]
    assert set(spec["selector"]) == {"matchLabels"}
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in production.objects
        if o["kind"] in {"Deployment", "Job"}
    }
    assert selector.items() <= pods[f"{FULLNAME}-worker"].items()
    assert not selector.items() <= pods[f"{FULLNAME}-web"].items()
    assert not selector.items() <= pods[f"{FULLNAME}-migration"].items()
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["port"] in {p["name"] for p in container(production, "worker")["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "http"
    assert_scrape_endpoint(endpoint)
    # The web scrape is unchanged: the Service's port, web pods only.
    (web,) = production.get("ServiceMonitor", FULLNAME)["spec"]["endpoints"]
    assert web["port"] == "http"


def test_monitors_share_the_service_monitor_settings(chart: helm.Chart) -> None:
    relabelings = [{"action": "labeldrop", "regex": "endpoint"}]
    release = render(
        chart,
        {
            "serviceMonitor": {
                "enabled": True,
                "namespace": "monitoring",
                "interval": "15s",
                "relabelings": relabelings,
            },
            "prometheusRule": {"enabled": True},
        },
    )
    pm = release.get("PodMonitor", f"{FULLNAME}-worker")
    sm = release.get("ServiceMonitor", FULLNAME)
    assert pm["metadata"]["namespace"] == sm["metadata"]["namespace"] == "monitoring"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["interval"] == "15s"
    assert endpoint["relabelings"] == relabelings
    # Still the release namespace's pods; the operator names the job after the PodMonitor.
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (group,) = rule_groups(release)
    given_up = next(r for r in group["rules"] if r["alert"] == "CirelayDeliveriesGivenUp")
    assert f'namespace="{NAMESPACE}", job="monitoring/{FULLNAME}-worker"' in given_up["expr"]


def test_no_pod_monitor_without_a_worker(chart: helm.Chart) -> None:
    release = render(
        chart,
        {"worker": {"enabled": False}, "serviceMonitor": {"enabled": True}},
    )
    assert not release.all("PodMonitor")
    assert release.has("ServiceMonitor", FULLNAME)


def rule_groups(release: Release) -> list[dict[str, Any]]:
    rule = release.get("PrometheusRule", FULLNAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    groups = rule["spec"]["groups"]
    assert isinstance(groups, list)
    return groups


def test_prometheus_rule_structure(production: Release) -> None:
    (group,) = rule_groups(production)
    assert group["name"] == FULLNAME
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "CirelayNotificationsRejected",
        "CirelayDeliveryBacklogStale",
        "CirelaySubscriptionsDisabled",
        "CirelayDeliveriesGivenUp",
        "CirelayPodNotReady",
    }
    for name, rule in alerts.items():
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["labels"]["team"] == "platform", name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert "{{" not in rule["expr"], name
    # Series of this release only. The database gauges come from the web job alone (the
    # workers report the same figures); the delivery counters from the worker job alone.
    web_job = f'namespace="{NAMESPACE}", job="{FULLNAME}"'
    worker_job = f'namespace="{NAMESPACE}", job="{NAMESPACE}/{FULLNAME}-worker"'
    for name in ("CirelayDeliveryBacklogStale", "CirelaySubscriptionsDisabled"):
        assert web_job in alerts[name]["expr"], name
        assert worker_job not in alerts[name]["expr"], name
    given_up = alerts["CirelayDeliveriesGivenUp"]["expr"]
    assert worker_job in given_up and 'outcome="given_up"' in given_up
    assert given_up.startswith("sum by (namespace, job) (increase(")


def test_alerts_can_be_switched_off_one_by_one(chart: helm.Chart) -> None:
    release = render(
        chart,
        {
            "prometheusRule": {
                "enabled": True,
                "alerts": {"notReady": {"enabled": False}},
                "extraRules": [
                    {
                        "record": "cirelay:delivery_backlog:max",
                        "expr": "max(cirelay_delivery_backlog)",
                    }
                ],
            }
        },
    )
    (group,) = rule_groups(release)
    names = [r.get("alert") or r.get("record") for r in group["rules"]]
    assert "CirelayPodNotReady" not in names
    assert names[-1] == "cirelay:delivery_backlog:max"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return path


@pytest.fixture(scope="module")
def rules_dir(production: Release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The production PrometheusRule as a Prometheus rules file, next to alerts_test.yaml."""
    directory = tmp_path_factory.mktemp("rules")
    rules = {"groups": rule_groups(production)}
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", directory / "alerts_test.yaml")
    return directory


def run_promtool(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_every_alerts_runbook_url_points_at_its_section_of_docs_runbooks(
    production: Release,
) -> None:
    """``runbook_url`` is ``prometheusRule.runbookBaseUrl`` + ``#<alert, lower case>``, the
    anchor of a ``## <Alert>`` section of docs/runbooks.md that says what it means, how to
    confirm it and how to fix it."""
    (group,) = rule_groups(production)
    base = load_yaml(CHART / "values.yaml")["prometheusRule"]["runbookBaseUrl"]
    runbooks = (CHART.parents[1] / "docs" / "runbooks.md").read_text()
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", runbooks, re.M | re.S))
    for rule in group["rules"]:
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"{base}#{name.lower()}", name
        assert name in sections, f"docs/runbooks.md has no section ## {name}"
        for part in ("**Means**", "**Confirm**", "**Fix**"):
            assert part in sections[name], f"{name}: no {part}"


def test_promtool_checks_the_rules(promtool: str, rules_dir: Path) -> None:
    output = run_promtool(promtool, "check", "rules", "rules.yaml", cwd=rules_dir)
    assert "SUCCESS: 5 rules found" in output


def test_alerts_fire_on_the_series_they_watch(promtool: str, rules_dir: Path) -> None:
    output = run_promtool(promtool, "test", "rules", "alerts_test.yaml", cwd=rules_dir)
    assert "SUCCESS" in output


def test_tracing_is_off_unless_asked_and_then_exports_to_the_endpoint_given(
    chart: helm.Chart, default: Release
) -> None:
    assert "CIRELAY_TRACING" not in config_data(default)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in config_data(default)
    endpoint = "http://otel-collector.monitoring:4318"
    traced = render(chart, {"config": {"tracing": True, "otlpEndpoint": endpoint}})
    data = config_data(traced)
    assert data["CIRELAY_TRACING"] == "on"
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint


def test_the_console_is_published_only_when_switched_on(
    chart: helm.Chart, production: Release
) -> None:
    rules = production.get("Ingress", FULLNAME)["spec"]["rules"]
    assert not _published("/console/jobs", rules)
    switched = render(chart, {"ingress": {"enabled": True, "console": True}})
    rules = switched.get("Ingress", FULLNAME)["spec"]["rules"]
    assert _published("/console/jobs", rules) and _published("/v1/jobs", rules)
    assert not [p for p in KEYLESS_PATHS if _published(p, rules)]
    for ingress in switched.all("Ingress"):
        kubernetes_validate.validate(ingress, KUBE_VERSION, strict=True)
