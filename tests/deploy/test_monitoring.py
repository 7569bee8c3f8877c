"""components/monitoring: the ServiceMonitor finds the pods, the alert rules say what the
metrics mean (the names the daemon exports) and pass promtool's unit tests, which cover
each alert firing and not firing."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from tests.deploy import alerts
from tests.deploy.manifests import RENDERED, the

MONITORING = RENDERED["overlays/monitoring"]
# the metric names the daemon exports (docs/daemon.md; fixed for these rules)
METRICS = {
    "vfio_manager_function_state",
    "vfio_manager_functions",
    "vfio_manager_node_converged",
    "vfio_manager_host_ready",
    "vfio_manager_transitions_total",
    "vfio_manager_journal_records",
    "vfio_manager_journal_oldest_record_seconds",
}
ALERTS = {
    "VfioManagerNodeNotConverged": "15m",
    "VfioManagerFunctionFailed": "10m",
    "VfioManagerDown": "5m",
    "VfioManagerJournalRecordStuck": "15m",
}
needs_promtool = pytest.mark.skipif(
    alerts.promtool() is None,
    reason="promtool not installed (tools/kubernetes/check installs Debian's prometheus)",
)


def _rules() -> list[dict[str, Any]]:
    (group,) = alerts.rule_groups()
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_the_service_monitor_scrapes_the_metrics_service_of_every_pod() -> None:
    monitor = the(MONITORING, "ServiceMonitor", "vfio-manager")
    service = the(MONITORING, "Service", "vfio-manager-metrics")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    namespace = service["metadata"]["namespace"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
        "action": "replace",
    } in endpoint["relabelings"]


def test_the_alerts_are_the_four_and_use_only_exported_metrics() -> None:
    rules = _rules()
    assert {r["alert"]: r["for"] for r in rules} == ALERTS
    for rule in rules:
        names = set(re.findall(r"\b([a-z_]+)\s*[{(]", rule["expr"])) - {"absent"}
        assert names <= METRICS | {"up"}, rule["alert"]
        # the Service's name is the scrape job: no other job's series count
        assert 'job="vfio-manager-metrics"' in rule["expr"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    with alerts.TESTS.open(encoding="utf-8") as handle:
        cases = yaml.safe_load(handle)["tests"]
    seen: dict[str, set[bool]] = {name: set() for name in ALERTS}
    for case in cases:
        for check in case["alert_rule_test"]:
            seen[check["alertname"]].add(bool(check["exp_alerts"]))
    assert seen == {name: {True, False} for name in ALERTS}


@needs_promtool
def test_promtool_passes_the_unit_tests() -> None:
    result = alerts.run(alerts.rule_groups())
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


@needs_promtool
@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_promtool_fails_when_an_alert_waits_less(alert: str) -> None:
    """The unit tests can fail: an alert that fires after a minute breaks its quiet case."""
    groups = copy.deepcopy(alerts.rule_groups())
    (rule,) = [r for r in groups[0]["rules"] if r["alert"] == alert]
    rule["for"] = "1m"
    assert alerts.run(groups).returncode != 0
