"""The report: accuracy, statistics, FLOPs, and the stakeholder export."""
