"""Google Cloud Functions entry points (deployed with chalicelib/ staged beside them)."""
