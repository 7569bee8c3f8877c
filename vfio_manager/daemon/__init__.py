"""Daemon mode: keep the node converged, driven by kernel uevents, and say so.

The pieces are small and independent so each can be tested with real descriptors and an
injected clock: :mod:`.uevents` (kernel events), :mod:`.debounce`, :mod:`.backoff`,
:mod:`.notify` (systemd), :mod:`.readiness` (the ready file), :mod:`.intent` and
:mod:`.presence` (the admin's wishes, and whether a daemon is up), :mod:`.metrics` and
:mod:`.http` (only with ``--listen``), and :mod:`.loop`, which drives a reconciler it is
given. The package sits above the pipeline and below the CLI; importing it loads nothing
heavy (prometheus-client and http.server are imported only when ``--listen`` is set).
"""
