"""Staged jobs: a run that is more than a backbone, driven by `mmntp train` when `job.kind` is set."""
