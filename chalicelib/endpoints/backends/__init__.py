"""Endpoint backends: where an endpoint's model server runs (local, SageMaker, SageMaker Serverless, Vertex).

ENDPOINT_REGISTRY names each as "module:Class"; the implementation is imported only when it is built."""

from __future__ import annotations

ENDPOINT_REGISTRY: dict[str, str] = {
    "local": "chalicelib.endpoints.backends.local:LocalEndpointBackend",
    "sagemaker": "chalicelib.endpoints.backends.sagemaker:SageMakerEndpointBackend",
    "sagemaker-serverless": "chalicelib.endpoints.backends.sagemaker:SageMakerServerlessBackend",
    "vertex": "chalicelib.endpoints.backends.vertex:VertexEndpointBackend",
}
