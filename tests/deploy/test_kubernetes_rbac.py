"""deploy/kubernetes/rbac.yaml grants exactly what the kubernetes backend calls, read from its requests."""

from __future__ import annotations

from dataclasses import replace

import yaml

from chalicelib.backends.base import Handle
from tests.factories import ROOT, k8s_env, make_job, make_settings

RBAC = ROOT / "deploy" / "kubernetes" / "rbac.yaml"


def _granted() -> set[tuple[str, str, str]]:
    role, binding = yaml.safe_load_all(RBAC.read_text())
    assert (role["kind"], binding["kind"], binding["roleRef"]["name"]) == (
        "Role",
        "RoleBinding",
        role["metadata"]["name"],
    )
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def _needed(method: str, path: str) -> tuple[str, str, str]:
    """A request as RBAC sees it: (API group, resource[/subresource], verb)."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    resource, named = rest[2], len(rest) > 3
    if len(rest) > 4:
        resource += "/" + rest[4]
    verb = {"POST": "create", "DELETE": "delete"}.get(method, "get" if named else "list")
    return group, resource, verb


def test_the_role_grants_exactly_the_calls_the_backend_makes(tmp_path, fake_k8s):
    from chalicelib.backends.kubernetes.backend import KubernetesBackend

    plain = KubernetesBackend(make_settings(tmp_path, **k8s_env(fake_k8s)))
    queued = KubernetesBackend(make_settings(tmp_path, **k8s_env(fake_k8s, {"name": "q", "local_queue": "team-a"})))
    for backend, nodes in ((plain, 1), (queued, 1), (plain, 2)):
        job = make_job("kubernetes", {"image": "busybox:1.36", "resources": {"nodes": nodes}})
        handle = replace(Handle.of(job), native_id=backend.launch(job).native_id)
        backend.describe(handle)
        fake_k8s.admit(handle.native_name)
        fake_k8s.start(handle.native_name, log="hi\n")
        backend.describe_many([handle])
        backend.logs(handle)
        backend.cancel(handle)
        for resource in backend.list_managed():
            backend.stop_resource(resource, "sweep")
    made = {_needed(method, path) for method, path, _ in fake_k8s.requests}
    assert made == _granted()


def test_a_request_maps_to_its_rbac_verb():
    assert _needed("GET", "/api/v1/namespaces/ml/pods/p-1/log") == ("", "pods/log", "get")
    assert _needed("GET", "/apis/batch/v1/namespaces/ml/jobs") == ("batch", "jobs", "list")
    assert _needed("DELETE", "/apis/batch/v1/namespaces/ml/jobs/jp-1") == ("batch", "jobs", "delete")
