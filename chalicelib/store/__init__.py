"""Stores, one per aggregate: jobs (with history, capacity, idempotency), tokens, Slack state, dev VMs."""
