"""Mutation testing of the safety-critical modules, as a report (``python -m tools.mutants``)."""
