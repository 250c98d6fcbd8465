"""The built-in task of the embedded default: short integer arithmetic with a verifiable answer.

A problem reads ``Compute 26+10-17.``; its worked completion is ``<think>26+10=36. 36-17=19.</think> \\boxed{19}``
and its answer-only completion ``<think></think> \\boxed{19}``.

Held-out problems never reach training. The task reserves a held-out set, ``heldout(heldout_size, heldout_seed)``
(distinct prompts drawn in order from ``random.Random(heldout_seed)``), and every training draw (``sample``, and so
``dataset`` and the SFT warm-start) rejects a prompt that lies in it. ``heldout(n, heldout_seed)`` with
``n <= heldout_size`` is a prefix of the reserved set, so evaluating on fewer problems stays disjoint too. Training
datasets must also use a seed other than ``heldout_seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property

import datasets

from archer.errors import UserError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
BOXED_OPEN = "\\boxed{"
SUPPORTED_OPS = "+-*"
_MAX_TERMS_LIMIT = 8
VALIDATION_SEED = 99


@dataclass(frozen=True)
class ArithmeticProblem:
    """One problem: the plain-text prompt, the integer answer and the worked (step-by-step) completion."""

    prompt: str
    answer: int
    worked: str

    @property
    def solution(self) -> str:
        """The gold answer as the math reward expects it (e.g. ``"19"``)."""
        return str(self.answer)

    @property
    def answer_only(self) -> str:
        """The completion that states the answer without showing working."""
        return f"{THINK_OPEN}{THINK_CLOSE} {BOXED_OPEN}{self.answer}}}"


def _evaluate(terms: list[int], ops: list[str]) -> tuple[int, list[str]]:
    """Evaluate with the usual precedence (``*`` first, then left to right); return the value and the steps."""
    terms, ops, steps = list(terms), list(ops), []
    for group in ("*", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] not in group:
                i += 1
                continue
            a, op, b = terms[i], ops[i], terms[i + 1]
            value = a * b if op == "*" else a + b if op == "+" else a - b
            steps.append(f"{a}{op}{b}={value}.")
            terms[i : i + 2] = [value]
            del ops[i]
    return terms[0], steps


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems ``a op b (op c ...)`` over non-negative operands, graded on the integer result."""

    max_operand: int = field(default=30, metadata={"help": "Operands are drawn uniformly from 0..max_operand."})
    min_terms: int = field(default=2, metadata={"help": "Fewest operands in a problem (at least 2)."})
    max_terms: int = field(default=3, metadata={"help": f"Most operands in a problem (at most {_MAX_TERMS_LIMIT})."})
    ops: str = field(default="+-", metadata={"help": f"Operators to draw from, a subset of {SUPPORTED_OPS!r}."})
    heldout_size: int = field(
        default=500, metadata={"help": "Size of the reserved held-out set, never used for training."}
    )
    heldout_seed: int = field(
        default=20_251_127, metadata={"help": "Seed of the reserved held-out set; training seeds must differ."}
    )

    def __post_init__(self) -> None:
        if self.max_operand < 1:
            raise UserError(f"task.max_operand={self.max_operand}: must be an integer >= 1")
        if not 2 <= self.min_terms <= self.max_terms <= _MAX_TERMS_LIMIT:
            raise UserError(
                f"task.min_terms={self.min_terms}, task.max_terms={self.max_terms}: "
                f"need 2 <= min_terms <= max_terms <= {_MAX_TERMS_LIMIT}"
            )
        if not self.ops or set(self.ops) - set(SUPPORTED_OPS) or len(set(self.ops)) != len(self.ops):
            raise UserError(f"task.ops={self.ops!r}: must be distinct operators from {SUPPORTED_OPS!r}")
        if self.heldout_size < 1:
            raise UserError(f"task.heldout_size={self.heldout_size}: must be >= 1")
        if self.heldout_size > self.num_problems // 2:
            raise UserError(
                f"task.heldout_size={self.heldout_size}: the task has only {self.num_problems} distinct problems; "
                "reserve at most half of them"
            )

    @property
    def num_problems(self) -> int:
        """How many distinct prompts the task can produce."""
        n_values, n_ops = self.max_operand + 1, len(self.ops)
        return sum(n_values**k * n_ops ** (k - 1) for k in range(self.min_terms, self.max_terms + 1))

    def _draw(self, rng: random.Random) -> ArithmeticProblem:
        n_terms = rng.randint(self.min_terms, self.max_terms)
        terms = [rng.randint(0, self.max_operand) for _ in range(n_terms)]
        ops = [rng.choice(self.ops) for _ in range(n_terms - 1)]
        answer, steps = _evaluate(terms, ops)
        expression = "".join(f"{t}{o}" for t, o in zip(terms[:-1], ops, strict=True)) + str(terms[-1])
        worked = f"{THINK_OPEN}{' '.join(steps)}{THINK_CLOSE} {BOXED_OPEN}{answer}}}"
        return ArithmeticProblem(prompt=f"Compute {expression}.", answer=answer, worked=worked)

    def heldout(self, n: int | None = None, seed: int | None = None) -> list[ArithmeticProblem]:
        """``n`` distinct problems drawn from ``seed`` (defaults: the reserved held-out set)."""
        n = self.heldout_size if n is None else n
        seed = self.heldout_seed if seed is None else seed
        if not 1 <= n <= self.num_problems // 2:
            raise UserError(f"held-out n={n}: must be between 1 and {self.num_problems // 2} for this task")
        problems: list[ArithmeticProblem]
        rng, seen, problems = random.Random(seed), set(), []
        while len(problems) < n:
            problem = self._draw(rng)
            if problem.prompt not in seen:
                seen.add(problem.prompt)
                problems.append(problem)
        return problems

    @cached_property
    def heldout_prompts(self) -> frozenset[str]:
        """Prompts of the reserved held-out set: ``sample`` never returns one of them."""
        return frozenset(p.prompt for p in self.heldout())

    def sample(self, rng: random.Random) -> ArithmeticProblem:
        """Draw one training problem (never one of the reserved held-out prompts)."""
        while True:
            problem = self._draw(rng)
            if problem.prompt not in self.heldout_prompts:
                return problem

    def validation(self, n: int, seed: int = VALIDATION_SEED) -> list[ArithmeticProblem]:
        """``n`` problems drawn like training ones (never held-out prompts), from their own seed: for choices made
        during training (when to stop the SFT warm start), which must not look at the held-out set."""
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def dataset(self, n: int, seed: int) -> datasets.Dataset:
        """``n`` training problems as columns ``prompt`` (plain text) and ``solution`` (the gold answer)."""
        if n < 1:
            raise UserError(f"dataset size n={n}: must be >= 1")
        if seed == self.heldout_seed:
            raise UserError(f"training seed={seed}: equals task.heldout_seed; pick another seed")
        rng = random.Random(seed)
        problems = [self.sample(rng) for _ in range(n)]
        return datasets.Dataset.from_dict(
            {"prompt": [p.prompt for p in problems], "solution": [p.solution for p in problems]}
        )
