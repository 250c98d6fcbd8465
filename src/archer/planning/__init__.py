"""`archer train --dry-run`: what a recipe will do on N GPUs (model shape, precision, memory per GPU), before launching."""
