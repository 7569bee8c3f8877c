"""The write pipeline: selection, plan, engine, and the transition that runs them."""
