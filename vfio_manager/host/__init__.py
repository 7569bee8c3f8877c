"""Host readiness: host files, the facts read from them, the checks, module loading."""
