"""jobplane's user CLI and local stack (never deployed to Lambda)."""
