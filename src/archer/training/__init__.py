"""`archer train`: the trainer (TRL GRPOTrainer + the Archer objective), its config, the batch rule, and the pipeline
that runs a recipe into a run folder (warm start, RL, checkpoints and resume, metrics, plots, card)."""
