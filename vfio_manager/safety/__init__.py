"""Safety mechanisms: the state directory, node lock, journal, intents, the writer and its
deadlines, process holders, host-critical functions."""
