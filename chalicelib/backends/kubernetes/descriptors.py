"""The kubernetes backend's facts, light to import: the implementation and the client load only when built."""

from __future__ import annotations

from chalicelib.backends import BackendDescriptor, Cloud

KUBERNETES = BackendDescriptor(
    name="kubernetes",
    implementation="chalicelib.backends.kubernetes.backend:KubernetesBackend",
    cloud=Cloud.KUBERNETES,
    display_name="Kubernetes",
    # After the managed training services, before the AWS queues: a team's own cluster (GKE spot pools).
    rank=30,
    role="batch/v1 Job on the team's cluster (EKS, GKE or kubeconfig; Kueue when configured)",
    # EKS clusters: their endpoint and CA come from DescribeCluster; the bearer token is a presigned
    # sts:GetCallerIdentity, which needs no permission.
    iam_actions=("eks:DescribeCluster",),
    unsupported_features={"tpu": "TPUs exist only on Vertex AI"},
    # An Indexed Job of N pods with a headless Service; the cluster's nodes and quotas decide beyond this.
    max_nodes=64,
    reaps=True,  # the orphan sweep: Jobs carrying this stage's labels and no live jobplane job
)
