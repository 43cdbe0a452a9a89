"""The local backend: jobs as real processes on this machine, watched by a detached runner."""
