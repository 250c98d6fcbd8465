"""The built-in arithmetic task: generation, worked solutions, validation, held-out disjointness."""

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archer.data.arithmetic import ArithmeticProblem, ArithmeticTask
from archer.errors import UserError

PROMPT = re.compile(r"^Compute (\d+(?:[-+*]\d+)+)\.$")
WORKED = re.compile(r"^<think>(.*)</think> \\boxed\{(-?\d+)\}$")


def check_problem(task: ArithmeticTask, problem: ArithmeticProblem) -> None:
    expression = PROMPT.match(problem.prompt).group(1)
    operands = [int(x) for x in re.split(r"[-+*]", expression)]
    assert task.min_terms <= len(operands) <= task.max_terms
    assert all(0 <= x <= task.max_operand for x in operands)
    assert set(re.findall(r"[-+*]", expression)) <= set(task.ops)
    assert problem.answer == eval(expression)  # noqa: S307 - digits and + - * only, checked by PROMPT
    working, boxed = WORKED.match(problem.worked).groups()
    assert int(boxed) == problem.answer and problem.solution == str(problem.answer)
    # Every step is a true equation, there is one per operator, and the last one gives the answer.
    steps = working.split(" ")
    assert len(steps) == len(operands) - 1
    for step in steps:
        lhs, rhs = step.rstrip(".").split("=")
        assert eval(lhs) == int(rhs)  # noqa: S307
    assert int(steps[-1].rstrip(".").split("=")[1]) == problem.answer
    assert problem.answer_only == f"<think></think> \\boxed{{{problem.answer}}}"


def test_default_problem_matches_the_design_format():
    task = ArithmeticTask()
    problem = task._draw(random.Random(0))
    check_problem(task, problem)
    assert problem.prompt.startswith("Compute ") and problem.worked.startswith("<think>")


@settings(max_examples=40, deadline=None)
@given(
    max_operand=st.integers(1, 120),
    min_terms=st.integers(2, 4),
    extra_terms=st.integers(0, 3),
    ops=st.sampled_from(["+", "-", "*", "+-", "+-*", "*-"]),
    seed=st.integers(0, 10_000),
)
def test_samples_are_well_formed_and_correct(max_operand, min_terms, extra_terms, ops, seed):
    task = ArithmeticTask(
        max_operand=max_operand, min_terms=min_terms, max_terms=min_terms + extra_terms, ops=ops, heldout_size=1
    )
    rng = random.Random(seed)
    for _ in range(20):
        check_problem(task, task.sample(rng))


def test_multiplication_binds_tighter_in_the_working():
    task = ArithmeticTask(ops="+*", min_terms=3, heldout_size=1)
    rng = random.Random(3)
    problems = [task.sample(rng) for _ in range(200)]
    mixed = [p for p in problems if "+" in p.prompt and "*" in p.prompt]
    assert mixed
    for p in mixed:
        check_problem(task, p)  # each step must be a true equation and the answer follows precedence


def test_counts_distinct_problems():
    task = ArithmeticTask(max_operand=2, min_terms=2, max_terms=3, ops="+-", heldout_size=10)
    assert task.num_problems == 3**2 * 2 + 3**3 * 4
    rng, seen = random.Random(0), set()
    for _ in range(5000):
        seen.add(task._draw(rng).prompt)
    assert len(seen) == task.num_problems


def test_heldout_is_distinct_reproducible_and_prefix_stable():
    task = ArithmeticTask()
    full = task.heldout()
    assert len(full) == task.heldout_size == len({p.prompt for p in full})
    assert [p.prompt for p in task.heldout(50)] == [p.prompt for p in full[:50]]
    assert task.heldout(50, seed=1) != task.heldout(50)


def test_training_draws_never_hit_the_heldout_set():
    # A small task where held-out prompts would otherwise be drawn very often.
    task = ArithmeticTask(max_operand=5, min_terms=2, max_terms=2, ops="+-", heldout_size=30)
    assert len(task.heldout_prompts) == 30
    rng = random.Random(1)
    drawn = {task.sample(rng).prompt for _ in range(3000)}
    assert not drawn & task.heldout_prompts
    assert len(drawn) == task.num_problems - 30  # everything else is still reachable
    ds = task.dataset(500, seed=2)
    assert not set(ds["prompt"]) & task.heldout_prompts


def test_dataset_columns_and_determinism():
    task = ArithmeticTask()
    ds = task.dataset(64, seed=7)
    assert ds.column_names == ["prompt", "solution"] and len(ds) == 64
    assert ds[:] == task.dataset(64, seed=7)[:]
    assert ds["prompt"] != task.dataset(64, seed=8)["prompt"]
    for prompt, solution in zip(ds["prompt"], ds["solution"], strict=True):
        assert int(solution) == eval(PROMPT.match(prompt).group(1))  # noqa: S307


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_operand": 0},
        {"min_terms": 1},
        {"min_terms": 4, "max_terms": 3},
        {"max_terms": 9},
        {"ops": ""},
        {"ops": "+/"},
        {"ops": "++"},
        {"heldout_size": 0},
        {"max_operand": 1, "max_terms": 2, "heldout_size": 5},
    ],
)
def test_invalid_settings_raise_one_line_user_errors(kwargs):
    with pytest.raises(UserError) as err:
        ArithmeticTask(**kwargs)
    assert "\n" not in str(err.value) and "task." in str(err.value)


def test_dataset_rejects_the_heldout_seed_and_empty_sizes():
    task = ArithmeticTask()
    with pytest.raises(UserError, match="heldout_seed"):
        task.dataset(10, seed=task.heldout_seed)
    with pytest.raises(UserError):
        task.dataset(0, seed=1)
    with pytest.raises(UserError):
        task.heldout(task.num_problems)


def test_fields_carry_help():
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(ArithmeticTask))
