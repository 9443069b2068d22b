"""Step 3: per-example gradient features of the base model, projected and stored."""
