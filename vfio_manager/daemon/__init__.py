"""Daemon mode: keep the node converged, driven by kernel uevents, and say so (docs/daemon.md).

:mod:`.service` assembles it, :mod:`.loop` decides when to reconcile, :mod:`.reconciler` runs
the write pipeline and tells per-function states, :mod:`.health` says where the node stands.
"""
