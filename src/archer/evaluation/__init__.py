"""Benchmark evaluation on lighteval task definitions: suites, backends, grading, avg@k / pass@k, results files."""

from archer.evaluation.metrics import aggregate, avg_at_k, pass_at_k
from archer.evaluation.suite import Suite, TaskSpec, load_suite

__all__ = ["Suite", "TaskSpec", "aggregate", "avg_at_k", "load_suite", "pass_at_k"]
