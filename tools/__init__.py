"""Developer tools; only tools/mutants is a Python package (``python -m tools.mutants``)."""
