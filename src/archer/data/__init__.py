"""Training data: the built-in arithmetic task and loaders for public training sets."""

from archer.data.arithmetic import ArithmeticProblem, ArithmeticTask

__all__ = ["ArithmeticProblem", "ArithmeticTask"]
