"""Step 4: the first-order estimate of fine-tuning on a subset, and the task-affinity matrix built from it."""
