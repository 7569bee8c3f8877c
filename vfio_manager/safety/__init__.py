"""Safety mechanisms: node lock, journal, deadlines, process holders, host-critical functions."""
