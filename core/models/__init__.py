"""Step 2: the base model and its adapters: provisioning, loading, LoRA, the frozen-prefix cache, answer-choice scoring and FLOP counting."""
