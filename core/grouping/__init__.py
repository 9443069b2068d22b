"""Step 5: partitioning the tasks into m groups from the affinity matrix."""
