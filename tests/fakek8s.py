"""A loopback Kubernetes API server: batch/v1 Jobs, v1 Pods, pod logs and Services, Kueue Workloads, in the API's JSON.

Every Job body it receives is read into the official client's V1Job and written back: a field the model does
not know (a typo, a wrong level) is lost on that round trip, and the server answers 422 naming it. Pods do not
run by themselves: a test moves them (start, succeed, fail, preempt) with the helpers below.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

JOB_NAME = "batch.kubernetes.io/job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A meta/v1 Status, as the API server answers errors."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: k=v, k==v, k!=v, k (exists), comma-joined."""
    for part in filter(None, (p.strip() for p in selector.split(","))):
        if "!=" in part:
            key, value = part.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in part:
            key, value = part.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif part not in labels:
            return False
    return True


def round_trip(body: dict[str, Any], model: str) -> dict[str, Any]:
    """`body` read into the client's model and serialised again (what a real server would have understood)."""
    from kubernetes import client

    api = client.ApiClient()
    return api.sanitize_for_serialization(api._ApiClient__deserialize(body, model))  # the client's own reader


def differences(sent: Any, kept: Any, where: str = "") -> list[str]:
    if isinstance(sent, dict):
        found = []
        for key, value in sent.items():
            if not isinstance(kept, dict) or key not in kept:
                found.append(f"{where}.{key}".lstrip("."))
            else:
                found += differences(value, kept[key], f"{where}.{key}")
        return found
    if isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return [where]
        return [d for i, (a, b) in enumerate(zip(sent, kept, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if sent == kept or (sent is not None and str(sent) == str(kept)) else [where]


class FakeKubernetes:
    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], str] = {}
        # (namespace, pod) whose node is gone: the API server cannot reach its kubelet for the log (a 500)
        self.unreachable_logs: set[tuple[str, str]] = set()
        self.workloads: list[dict[str, Any]] = []
        self.config: Path | None = None  # the kubeconfig file, once kubeconfig() wrote it
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, folder: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context is this server (plain HTTP on loopback, a bearer token)."""
        path = folder / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.endpoint}}],
                    "users": [{"name": "jobplane", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "jobplane", "namespace": namespace}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        self.config = path
        return path

    # --- moving pods, as the kubelet and the Job controller would ------------------------------------
    def job_of(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.jobs[(namespace, name)]

    def add_pod(
        self, name: str, namespace: str = "default", phase: str = "Pending", index: int | None = None, **status: Any
    ) -> str:
        """A pod of Job `name`; `index`: its completion index in an Indexed Job (the annotation the controller sets)."""
        with self.lock:
            job = self.job_of(name, namespace)
            template = job["spec"]["template"]
            pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
            labels = {**(template["metadata"].get("labels") or {}), JOB_NAME: name, "job-name": name}
            self.pods[(namespace, pod_name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": namespace,
                    "labels": labels,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": now(),
                    **({"annotations": {COMPLETION_INDEX: str(index)}} if index is not None else {}),
                },
                "spec": template["spec"],
                "status": {"phase": phase, **status},
            }
            job["status"]["active"] = 1
            job["status"].setdefault("startTime", now())
            return pod_name

    def latest_pod(self, name: str, namespace: str = "default") -> str:
        found = [p["metadata"]["name"] for p in self.listed(self.pods, namespace, f"{JOB_NAME}={name}")]

        # Within a second (creationTimestamp's resolution) a pod that has not ended is the later one.
        def order(n: str) -> tuple[str, bool, str]:
            pod = self.pods[(namespace, n)]
            return pod["metadata"]["creationTimestamp"], pod["status"]["phase"] not in ("Failed", "Succeeded"), n

        return sorted(found, key=order)[-1]

    def start(
        self, name: str, namespace: str = "default", log: str = "", pod: str | None = None, index: int | None = None
    ) -> str:
        """A pod of the Job runs: a new one (`index`: its completion index in an Indexed Job), or `pod` (a Pending
        one, such as the replacement preempt() made)."""
        running = {
            "startTime": now(),
            "containerStatuses": [
                {
                    "name": "job",
                    "image": "x",
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now()}},
                }
            ],
        }
        if pod is None:
            pod = self.add_pod(name, namespace, "Running", index, **running)
        else:
            with self.lock:
                self.pods[(namespace, pod)]["status"] = {"phase": "Running", **running}
        self.logs[(namespace, pod)] = log
        return pod

    def _terminate(self, pod: str, namespace: str, phase: str, code: int, reason: str) -> None:
        status = self.pods[(namespace, pod)]["status"]
        status["phase"] = phase
        status["containerStatuses"] = [
            {
                "name": "job",
                "image": "x",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}},
            }
        ]

    def _conditions(self, job: dict[str, Any], *pairs: tuple[str, str, str]) -> None:
        job["status"]["conditions"] = [
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": now(),
                "lastTransitionTime": now(),
            }
            for kind, reason, message in pairs
        ]

    def succeed(self, name: str, namespace: str = "default", log: str | None = None) -> None:
        with self.lock:
            job = self.job_of(name, namespace)
            pod = self.latest_pod(name, namespace) if job["status"].get("active") else self.start(name, namespace)
            if log is not None:
                self.logs[(namespace, pod)] = log
            self._terminate(pod, namespace, "Succeeded", 0, "Completed")
            # batch/v1 since 1.31: SuccessCriteriaMet then Complete; the Job's status counts the pod.
            reached = "Reached expected number of succeeded pods"
            self._conditions(
                job, ("SuccessCriteriaMet", "CompletionsReached", reached), ("Complete", "CompletionsReached", reached)
            )
            job["status"].update(active=0, succeeded=1, completionTime=now())

    def fail(
        self,
        name: str,
        code: int = 1,
        reason: str = "Error",
        job_reason: str = "BackoffLimitExceeded",
        namespace: str = "default",
        terminal: bool = True,
    ) -> None:
        with self.lock:
            job = self.job_of(name, namespace)
            pod = self.latest_pod(name, namespace) if job["status"].get("active") else self.start(name, namespace)
            self._terminate(pod, namespace, "Failed", code, reason)
            messages = {
                "BackoffLimitExceeded": "Job has reached the specified backoff limit",
                "DeadlineExceeded": "Job was active longer than specified deadline",
                "PodFailurePolicy": f"Container job for pod {namespace}/{pod} failed with exit code {code} matching "
                "FailJob rule at index 1",
            }
            if terminal:
                self._conditions(
                    job,
                    ("FailureTarget", job_reason, messages[job_reason]),
                    ("Failed", job_reason, messages[job_reason]),
                )
                job["status"].update(active=0, failed=1)
            else:
                self._conditions(job, ("FailureTarget", job_reason, messages[job_reason]))

    def preempt(self, name: str, namespace: str = "default") -> str:
        """The running pod is disrupted (spot reclaim): DisruptionTarget, then Failed; the podFailurePolicy
        ignores it, so the controller makes a new pod and the Job's `failed` count does not grow."""
        with self.lock:
            pod = self.latest_pod(name, namespace)
            status = self.pods[(namespace, pod)]["status"]
            self._terminate(pod, namespace, "Failed", 143, "Error")
            status["conditions"] = [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "message": "Pod was terminated in response to imminent node shutdown.",
                    "lastTransitionTime": now(),
                }
            ]
            return self.add_pod(name, namespace, "Pending")

    def image_pull_backoff(self, name: str, namespace: str = "default") -> str:
        return self.add_pod(
            name,
            namespace,
            "Pending",
            containerStatuses=[
                {
                    "name": "job",
                    "image": "x",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "registry.example/nope:1"',
                        }
                    },
                }
            ],
        )

    def unschedulable(self, name: str, namespace: str = "default") -> str:
        return self.add_pod(
            name,
            namespace,
            "Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastTransitionTime": now(),
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        )

    def pending_workload(self, name: str, namespace: str = "default", message: str = "") -> None:
        job = self.job_of(name, namespace)
        self.workloads.append(
            {
                "apiVersion": "kueue.x-k8s.io/v1beta1",
                "kind": "Workload",
                "metadata": {
                    "name": f"job-{name}-1a2b3",
                    "namespace": namespace,
                    "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]},
                },
                "status": {
                    "conditions": [
                        {
                            "type": "QuotaReserved",
                            "status": "False",
                            "reason": "Pending",
                            "message": message,
                            "lastTransitionTime": now(),
                        }
                    ]
                },
            }
        )

    def admit(self, name: str, namespace: str = "default") -> None:
        with self.lock:
            self.job_of(name, namespace)["spec"]["suspend"] = False

    @staticmethod
    def listed(objects: dict[tuple[str, str], dict[str, Any]], namespace: str, selector: str) -> list[dict[str, Any]]:
        return [o for (ns, _), o in objects.items() if ns == namespace and matches(o["metadata"]["labels"], selector)]

    def bodies(self, method: str, path_end: str) -> list[dict[str, Any] | None]:
        return [b for m, p, b in self.requests if m == method and p.endswith(path_end)]

    # --- the HTTP side ---------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                return None

            def _send(self, code: int, body: Any, text: bool = False) -> None:
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any] | None:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                body = self._body() if method in ("POST", "DELETE") else None
                with fake.lock:
                    fake.requests.append((method, url.path, body))
                    if self.headers.get("Authorization") != "Bearer fake-token":
                        return self._send(401, status(401, "Unauthorized", "Unauthorized"))
                    parts = url.path.strip("/").split("/")
                    try:
                        return self._dispatch(method, parts, query, body)
                    except KeyError as exc:
                        return self._send(404, status(404, "NotFound", f"{exc} not found"))

            def _dispatch(self, method, parts, query, body):
                selector = query.get("labelSelector", "")
                if parts[:3] == ["apis", "batch", "v1"] and parts[3] == "namespaces" and parts[5] == "jobs":
                    ns = parts[4]
                    if len(parts) == 6 and method == "POST":
                        kept = round_trip(body, "V1Job")
                        lost = differences(body, kept)
                        if lost:
                            return self._send(422, status(422, "Invalid", f"unknown fields: {', '.join(lost)}"))
                        name = body["metadata"]["name"]
                        if (ns, name) in fake.jobs:
                            return self._send(409, status(409, "AlreadyExists", f'jobs.batch "{name}" already exists'))
                        body["metadata"].update(
                            namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now(), resourceVersion="1"
                        )
                        body["status"] = {}
                        fake.jobs[(ns, name)] = body
                        return self._send(201, body)
                    if len(parts) == 6 and method == "GET":
                        items = fake.listed(fake.jobs, ns, selector)
                        return self._send(200, {"apiVersion": "batch/v1", "kind": "JobList", "items": items})
                    name = parts[6]
                    if method == "GET":
                        return self._send(200, fake.jobs[(ns, name)])
                    if method == "DELETE":
                        job = fake.jobs.pop((ns, name))
                        if (body or {}).get("propagationPolicy") in ("Background", "Foreground"):
                            for pod in fake.listed(fake.pods, ns, f"{JOB_NAME}={name}"):
                                del fake.pods[(ns, pod["metadata"]["name"])]
                        # The garbage collector: what the Job owns goes with it.
                        for key, owned in list(fake.services.items()):
                            owners = owned["metadata"].get("ownerReferences") or []
                            if any(o.get("uid") == job["metadata"]["uid"] for o in owners):
                                del fake.services[key]
                        details = {"name": name, "kind": "jobs", "uid": job["metadata"]["uid"]}
                        return self._send(200, {**status(200, "", ""), "status": "Success", "details": details})
                if parts[:2] == ["api", "v1"] and parts[2] == "namespaces" and parts[4] == "services":
                    ns = parts[3]
                    if len(parts) == 5 and method == "POST":
                        kept = round_trip(body, "V1Service")
                        lost = differences(body, kept)
                        if lost:
                            return self._send(422, status(422, "Invalid", f"unknown fields: {', '.join(lost)}"))
                        name = body["metadata"]["name"]
                        if (ns, name) in fake.services:
                            return self._send(409, status(409, "AlreadyExists", f'services "{name}" already exists'))
                        body["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now())
                        fake.services[(ns, name)] = body
                        return self._send(201, body)
                    if len(parts) == 6 and method == "GET":
                        return self._send(200, fake.services[(ns, parts[5])])
                if parts[:2] == ["api", "v1"] and parts[2] == "namespaces" and parts[4] == "pods":
                    ns = parts[3]
                    if len(parts) == 5:
                        items = fake.listed(fake.pods, ns, selector)
                        return self._send(200, {"apiVersion": "v1", "kind": "PodList", "items": items})
                    if len(parts) == 7 and parts[6] == "log":
                        fake.pods[(ns, parts[5])]  # noqa: B018 (a KeyError is the 404)
                        if (ns, parts[5]) in fake.unreachable_logs:
                            message = (
                                f'Get "https://10.128.0.7:10250/containerLogs/{ns}/{parts[5]}/job": '
                                "dial tcp 10.128.0.7:10250: connect: no route to host"
                            )
                            return self._send(500, status(500, "InternalError", message))
                        return self._send(200, fake.logs.get((ns, parts[5]), ""), text=True)
                if parts[:3] == ["apis", "kueue.x-k8s.io", "v1beta1"] and parts[-1] == "workloads":
                    found = {(w["metadata"]["namespace"], w["metadata"]["name"]): w for w in fake.workloads}
                    items = fake.listed(found, parts[4], selector)
                    return self._send(
                        200, {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "WorkloadList", "items": items}
                    )
                return self._send(404, status(404, "NotFound", "the server could not find the requested resource"))

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        return Handler
