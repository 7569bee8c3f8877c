"""The command-line surface: click options, rendering, exit codes."""
