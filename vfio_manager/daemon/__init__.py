"""Daemon mode (docs/daemon.md): :mod:`.service` assembles it, :mod:`.loop` decides when to
reconcile, :mod:`.reconciler` runs the pipeline, :mod:`.health` tells where the node stands."""
