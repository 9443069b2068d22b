"""Step 6: fine-tuning one adapter per group (and the single-adapter baseline), and evaluating it."""
