"""The operator's /metrics, /healthz and /readyz, scraped from a real `discoverd operator` process."""

from __future__ import annotations

import json

from discoverd.schema import keys
from kube.controlplane import ControlPlane
from kube.operator_fixtures import Operator, crds, operator
from kube.test_operator import INSTANCE, _get
from support.etcd import RawEtcd
from support.http import get, samples, value
from support.wait import wait_until

__all__ = ["crds", "operator"]


def test_operator_counts_mirrored_changes_conflicts_and_api_calls(
    operator: Operator, control_plane: ControlPlane, raw_etcd: RawEtcd, prefix: str, namespace: str
) -> None:
    base = operator.metrics_url
    assert get(f"{base}/healthz")[0] == 200
    wait_until(lambda: get(f"{base}/readyz") == (200, "ok\n"), 20, what="/readyz 200")
    key = keys.instance_config(prefix, "web", "i1")
    raw_etcd.put(key, json.dumps(INSTANCE))
    wait_until(lambda: _get(control_plane, namespace, "si", "web.i1"), timeout=10)
    assert value(base, "discoverd_operator_mirrored_total", action="create") == 1
    assert value(base, "discoverd_operator_etcd_wins_total") == 0

    operator.pause()  # both sides change while the operator is not looking: etcd wins
    try:
        raw_etcd.put(key, json.dumps({**INSTANCE, "service_version": "3.0"}))
        control_plane.kubectl_run(
            "patch", "si", "web.i1", "-n", namespace, "--type=merge", "-p", '{"spec":{"serviceVersion":"2.0"}}'
        )
    finally:
        operator.resume()
    wait_until(lambda: value(base, "discoverd_operator_etcd_wins_total") == 1, 15, what="one EtcdWins counted")

    found = samples(base)
    calls = {
        dict(labels).get("call"): v
        for (name, labels), v in found.items()
        if name.endswith("api_call_duration_seconds_count")
    }
    assert calls.get("create_namespaced_custom_object") == 1, calls
    assert (calls.get("patch_namespaced_custom_object") or 0) >= 1, calls
    assert ("discoverd_operator_queue_depth", ()) in found
    # A reconcile is timed when it ends: the one that counted EtcdWins still posts its event and status then.
    wait_until(
        lambda: (value(base, "discoverd_operator_reconcile_duration_seconds_count") or 0) >= 2,
        10,
        what="both reconciles timed",
    )
    # the rollout controller runs in the operator's process, and is served on the same endpoint
    assert value(base, "discoverd_controller_rollouts", phase="Progressing") == 0
