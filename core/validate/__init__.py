"""Checks of the estimate against real fine-tunes (uses steps 4 and 6)."""
