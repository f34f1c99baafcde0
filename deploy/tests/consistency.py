#!/usr/bin/env python3
"""Cross-file checks of the deployment artifacts, run by scripts/check-deploy.

Schema validators see one file at a time; these checks catch what only shows when
the files are read together: a probe on a port the container does not open, a
grace period shorter than the drain, a ServiceMonitor that selects nothing, a
PrometheusRule that drifted from rules.yml, a dashboard or alert naming a metric
the dialer does not export.

Usage:
  consistency.py check RENDERED_YAML   checks the `kubectl kustomize deploy/k8s` output
  consistency.py sync-rules            rewrites deploy/k8s/prometheusrule.yaml from
                                       deploy/prometheus/rules.yml

Needs Python 3.11+ (tomllib) and PyYAML (installed with kubernetes-validate).
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_RULE = DEPLOY / "k8s" / "prometheusrule.yaml"
CONFIG = DEPLOY / "k8s" / "config.toml"
SECRET_TEMPLATE = DEPLOY / "k8s" / "secret.template.yaml"
DASHBOARD = DEPLOY / "grafana" / "dialer-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"

# SPEC section 11: metric names are part of the contract, with their labels.
METRICS = {
    "dialer_dial_requests_total": {"campaign", "code", "category"},
    "dialer_call_outcomes_total": {"campaign", "code", "category"},
    "dialer_preflight_blocks_total": {"campaign", "rule"},
    "dialer_preflight_misses_total": {"code"},
    "dialer_jobs": {"campaign", "state"},
    "dialer_dial_request_duration_seconds": {"le"},
    "dialer_rate_limit_wait_seconds": {"le"},
    "dialer_dialing_halted": {"reason"},
    "dialer_webhook_events_total": {"type", "result"},
    "dialer_leases_recovered_total": set(),
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "endpoint", "container"}
HISTOGRAMS = {"dialer_dial_request_duration_seconds", "dialer_rate_limit_wait_seconds"}

# The brief's alert list: each must exist in rules.yml (names are ours).
REQUIRED_ALERTS = {
    "DialerDialingHalted",
    "DialerPreflightMisses",
    "DialerVendorErrorRateHigh",
    "DialerLeasesRecovered",
    "DialerWebhookRejections",
    "DialerJobsStuckInDialing",
}

PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by `scripts/check-deploy --sync-rules`.
# Edit rules.yml, then regenerate; scripts/check-deploy fails when they differ.
"""

# kubernetes-validate has no schema for the Prometheus Operator's CRDs (it warns
# and passes them). These are strict subsets of the monitoring.coreos.com/v1
# CRD schemas, limited to the fields this base uses, so a misspelt or misplaced
# field fails here instead of being silently dropped by the API server.
_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STR}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS},
    "additionalProperties": False,
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "jobLabel": _STR,
                    "selector": {
                        "type": "object",
                        "properties": {"matchLabels": _LABELS},
                        "additionalProperties": False,
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "port": _STR,
                                "path": _STR,
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": _STR,
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": _STR,
                                            "record": _STR,
                                            "expr": _STR,
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": _LABELS,
                                            "annotations": _LABELS,
                                        },
                                        "additionalProperties": False,
                                    },
                                },
                            },
                            "additionalProperties": False,
                        },
                    }
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
}

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)


def duration_seconds(text: str) -> float:
    """A humantime-style duration as used in config.toml ("500ms", "30s", "1m")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    parts = re.findall(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"not a duration: {text!r}")
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(dialer_[a-z_]+)\b", expr))


def base_metric(name: str) -> str | None:
    if name in METRICS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return None


def check_expr_metrics(where: str, expr: str) -> set[str]:
    used = set()
    for name in metric_names(expr):
        base = base_metric(name)
        if base is None:
            fail(f"{where}: `{name}` is not a metric of SPEC section 11")
            continue
        if base in HISTOGRAMS and name == base:
            fail(f"{where}: histogram `{name}` must be queried as _bucket, _sum or _count")
        used.add(base)
        # Label matchers must use the metric's own labels.
        for selector in re.findall(rf"\b{re.escape(name)}\{{([^}}]*)\}}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector):
                if label not in METRICS[base] | TARGET_LABELS:
                    fail(f"{where}: `{name}` has no label `{label}`")
    # Grouping and matching clauses may only name labels of the metrics used.
    known = set().union(*(METRICS[m] for m in used)) | TARGET_LABELS
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        for label in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", clause):
            if label not in known:
                fail(f"{where}: grouping label `{label}` belongs to none of {sorted(used)}")
    return used


def load_rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def sync_rules() -> None:
    rules = load_rules()
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "dialer", "labels": {"app.kubernetes.io/name": "dialer"}},
        "spec": {"groups": rules["groups"]},
    }

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # Multi-line PromQL stays a readable block, as in rules.yml.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(resource, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    PROMETHEUS_RULE.write_text(PROMETHEUS_RULE_HEADER + body)
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def one(kinds: dict[str, list[dict]], kind: str) -> dict:
    found = kinds.get(kind, [])
    if len(found) != 1:
        fail(f"expected exactly one {kind} in the kustomize output, found {len(found)}")
        return {}
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_container_security(name: str, container: dict) -> None:
    sc = container.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(f"container {name}: readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(f"container {name}: allowPrivilegeEscalation must be false")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        fail(f"container {name}: capabilities must drop ALL")
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(section, {}):
                fail(f"container {name}: resources.{section}.{resource} missing")


def check_deployment(kinds: dict[str, list[dict]], config: dict, secret_keys: set[str]) -> None:
    deployment = one(kinds, "Deployment")
    if not deployment:
        return
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    if spec.get("replicas") != 3:
        fail("Deployment: replicas must be 3 (several workers share PostgreSQL)")
    if not selects(spec["selector"], pod_labels):
        fail("Deployment: selector does not match the pod template labels")

    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail("pod: runAsNonRoot must be true")
    uid = psc.get("runAsUser")
    if not isinstance(uid, int) or uid == 0:
        fail("pod: runAsUser must be a non-zero numeric uid")
    docker_user = re.search(r"^USER\s+(\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    if docker_user is None or int(docker_user.group(1)) != uid:
        fail("pod: runAsUser differs from the Dockerfile's numeric USER")
    if pod.get("enableServiceLinks") is not False:
        fail("pod: enableServiceLinks must be false (DIALER_* service env vars)")

    containers = {c["name"]: c for c in pod["containers"]}
    worker = containers.get("dialer")
    if worker is None:
        fail("Deployment: no container named dialer")
        return
    for c in pod["containers"] + pod.get("initContainers", []):
        check_container_security(c["name"], c)

    # Port: config http.listen, containerPort, probes, Service targetPort.
    listen = config.get("http", {}).get("listen", "0.0.0.0:9000")
    listen_port = int(listen.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in worker.get("ports", [])}
    if ports.get("http") != 9000 or listen_port != 9000:
        fail(f"port: containerPort http={ports.get('http')} and http.listen={listen} must both be 9000")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = worker.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            fail(f"{probe}: path must be {path}, is {get.get('path')}")
        port = get.get("port")
        if ports.get(port, port) != 9000:
            fail(f"{probe}: port {port} is not the http port 9000")

    # Grace period: preStop delay + worker.shutdown_grace must fit with margin.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown = duration_seconds(config.get("worker", {}).get("shutdown_grace", "30s"))
    pre_stop = worker.get("lifecycle", {}).get("preStop", {})
    delay = 0.0
    if "exec" in pre_stop:
        command = pre_stop["exec"]["command"]
        if command[0] != "sleep":
            fail(f"preStop: expected a sleep, got {command}")
        delay = float(command[1])
    elif "sleep" in pre_stop:
        delay = float(pre_stop["sleep"]["seconds"])
    if grace <= delay + shutdown:
        fail(f"terminationGracePeriodSeconds {grace} must exceed preStop {delay:g}s + worker.shutdown_grace {shutdown:g}s")

    # The config file and the secret files the config names are mounted.
    mounts: dict[str, str] = {}  # absolute file path -> "configMap:KEY" / "secret:KEY"
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in worker.get("volumeMounts", []):
        volume = volumes.get(m["name"], {})
        sources = volume.get("projected", {}).get("sources", [])
        if "configMap" in volume:
            sources = [{"configMap": volume["configMap"]}]
        if "secret" in volume:
            sources = [{"secret": volume["secret"]}]
        for source in sources:
            for kind in ("configMap", "secret"):
                if kind in source:
                    for item in source[kind].get("items", []):
                        mounts[f"{m['mountPath'].rstrip('/')}/{item['path']}"] = f"{kind}:{source[kind]['name']}:{item['key']}"
    args = worker.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    if config_path is None or not mounts.get(config_path, "").startswith("configMap:dialer-config"):
        fail(f"--config {config_path} is not the mounted dialer-config ConfigMap's config.toml")
    for section, key in (("revdesk", "api_key_file"), ("webhook", "secret_file")):
        path = config.get(section, {}).get(key)
        source = mounts.get(path or "")
        if not source or not source.startswith("secret:dialer-secrets:"):
            fail(f"{section}.{key} = {path!r} is not a file mounted from the Secret dialer-secrets")
        elif source.split(":")[2] not in secret_keys:
            fail(f"{section}.{key}: Secret key {source.split(':')[2]} is not in secret.template.yaml")
    for c in pod["containers"] + pod.get("initContainers", []):
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and (ref["name"] != "dialer-secrets" or ref["key"] not in secret_keys):
                fail(f"{c['name']}: env {env['name']} references {ref['name']}/{ref['key']}, not in secret.template.yaml")
            if "value" in env and re.search(r"(?i)url|key|secret|password", env["name"]):
                fail(f"{c['name']}: env {env['name']} carries a literal value; take it from the Secret")
    db_env = {e["name"]: e for e in worker.get("env", [])}.get("DIALER__DATABASE__URL", {})
    if "secretKeyRef" not in db_env.get("valueFrom", {}):
        fail("dialer: DIALER__DATABASE__URL must come from the Secret")

    # Migrations run before the worker.
    migrate = [c for c in pod.get("initContainers", []) if c.get("args", [])[:1] == ["migrate"]]
    if not migrate:
        fail("no initContainer runs `dialer migrate`")
    elif migrate[0]["image"] != worker["image"]:
        fail("the migrate initContainer must use the worker's image")

    # PodDisruptionBudget and Service select these pods.
    pdb = one(kinds, "PodDisruptionBudget")
    if pdb and not selects(pdb["spec"]["selector"], pod_labels):
        fail("PodDisruptionBudget does not select the dialer pods")
    service = one(kinds, "Service")
    if service:
        sel = service["spec"].get("selector", {})
        if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
            fail("Service does not select the dialer pods")
        targets = {p["name"]: p.get("targetPort") for p in service["spec"]["ports"]}
        if targets.get("http") not in ("http", 9000):
            fail("Service port http must target the container's http port")
        monitor = one(kinds, "ServiceMonitor")
        if monitor:
            if not selects(monitor["spec"]["selector"], service["metadata"].get("labels", {})):
                fail("ServiceMonitor does not select the dialer Service")
            for endpoint in monitor["spec"].get("endpoints", []):
                if endpoint.get("port") not in targets:
                    fail(f"ServiceMonitor endpoint port {endpoint.get('port')} is not a Service port name")
                if endpoint.get("path") != "/metrics":
                    fail("ServiceMonitor endpoint path must be /metrics")
            job_label = monitor["spec"].get("jobLabel")
            if service["metadata"]["labels"].get(job_label) != "dialer":
                fail("ServiceMonitor jobLabel must resolve to job=\"dialer\" (DialerMetricsAbsent)")

    if "Secret" in kinds:
        fail("the base must not ship a Secret (it would overwrite the real credentials)")


def check_rules(kinds: dict[str, list[dict]]) -> None:
    rules = load_rules()
    rule = one(kinds, "PrometheusRule")
    if rule and rule["spec"].get("groups") != rules["groups"]:
        fail("PrometheusRule differs from deploy/prometheus/rules.yml: run scripts/check-deploy --sync-rules")
    alerts = set()
    used = set()
    for group in rules["groups"]:
        for r in group["rules"]:
            alerts.add(r.get("alert"))
            used |= check_expr_metrics(f"rules.yml {r.get('alert') or r.get('record')}", r["expr"])
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                fail(f"rules.yml {r.get('alert')}: severity label missing")
            if not {"summary", "description"} <= set(r.get("annotations", {})):
                fail(f"rules.yml {r.get('alert')}: summary and description annotations required")
    missing = REQUIRED_ALERTS - alerts
    if missing:
        fail(f"rules.yml lacks alerts {sorted(missing)}")


def check_dashboard() -> None:
    try:
        dashboard = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        fail(f"{DASHBOARD.name}: not valid JSON: {e}")
        return
    used = set()
    ids = set()
    for panel in dashboard.get("panels", []):
        if panel["id"] in ids:
            fail(f"dashboard: duplicate panel id {panel['id']}")
        ids.add(panel["id"])
        for target in panel.get("targets", []):
            used |= check_expr_metrics(f"dashboard panel {panel['title']!r}", target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            used |= check_expr_metrics(f"dashboard variable {variable['name']}", variable["definition"])
    missing = set(METRICS) - used
    if missing:
        fail(f"dashboard has no panel for {sorted(missing)}")
    # Panels must not overlap on Grafana's 24-column grid.
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard.get("panels", []):
        g = panel["gridPos"]
        if g["x"] + g["w"] > 24:
            fail(f"dashboard panel {panel['title']!r} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    fail(f"dashboard panels {panel['title']!r} and {cells[(x, y)]!r} overlap")
                    break
                cells[(x, y)] = panel["title"]
            else:
                continue
            break


def check_crds(docs: list[dict]) -> None:
    for doc in docs:
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            schema = CRD_SCHEMAS.get(doc.get("kind"))
            if schema is None:
                fail(f"no schema for {doc.get('apiVersion')} {doc.get('kind')}: add one to CRD_SCHEMAS")
                continue
            for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
                path = ".".join(str(p) for p in error.absolute_path)
                fail(f"{doc['kind']}/{doc['metadata'].get('name')}: {path}: {error.message}")


def check(rendered_path: str) -> None:
    docs = [d for d in yaml.safe_load_all(Path(rendered_path).read_text()) if d]
    kinds = by_kind(docs)
    check_crds(docs)
    config = tomllib.loads(CONFIG.read_text())
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    check_deployment(kinds, config, secret_keys)
    check_rules(kinds)
    check_dashboard()


def main(argv: list[str]) -> int:
    if argv[1:2] == ["sync-rules"]:
        sync_rules()
        return 0
    if len(argv) == 3 and argv[1] == "check":
        check(argv[2])
        for message in failures:
            print(f"FAIL {message}", file=sys.stderr)
        if failures:
            return 1
        print("consistency: OK")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
