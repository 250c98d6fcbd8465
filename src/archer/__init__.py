"""Archer: dual-token constraints for RL from verifiable rewards, on Hugging Face tooling."""

__version__ = "0.1.0"
