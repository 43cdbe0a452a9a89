"""jobplane core: shared by the Chalice app, the Cloud Functions and the CLI."""
