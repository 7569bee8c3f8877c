"""The write pipeline: selection, plan, refusals, engine, and the transition that runs them."""
