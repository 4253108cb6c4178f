"""Training tasks, registered by name for `pictag train --task NAME` (see `pictag.train.task`)."""
