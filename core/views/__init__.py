"""The dashboard's torch-free view-models: what each page shows, read from the workspace."""
