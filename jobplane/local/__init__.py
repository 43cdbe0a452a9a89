"""The local stack: the whole control plane on one machine with no cloud account."""
