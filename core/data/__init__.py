"""Step 1: the tasks: reading tables, mapping columns, prompts and answer words."""
