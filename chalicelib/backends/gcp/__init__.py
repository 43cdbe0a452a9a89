"""Google Cloud backends: Vertex AI, Compute Engine, their shared base and error table."""
