"""archer.training.batch: the paper's batch on any number of processes, and which rows each optimizer step trains on."""

from __future__ import annotations

import pytest
import torch

from archer.training.batch import BatchError, resolve_batch, rollout_schedule

PAPER = dict(per_device_train_batch_size=4, num_generations=16, responses_per_step=512, generation_batch_size=1024)


@pytest.mark.parametrize(("processes", "accumulation"), [(1, 128), (8, 16), (16, 8), (32, 4), (128, 1)])
def test_the_paper_batch_on_any_number_of_processes(processes, accumulation):
    batch = resolve_batch(num_processes=processes, num_iterations=3, **PAPER)
    assert batch.gradient_accumulation_steps == accumulation
    assert batch.responses_per_step == 512 and batch.prompts_per_rollout == 64
    assert batch.optimizer_steps_per_rollout == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_processes": 24}, r"responses_per_step=512: cannot be split over 24 process\(es\)"),
        ({"num_processes": 256}, "needs a multiple of 4 x 256 = 1024"),
        ({"num_processes": 8, "gradient_accumulation_steps": 8}, "gives 16; leave it out"),
        ({"num_processes": 8, "generation_batch_size": 768}, "not a whole number of optimizer steps of 512"),
        ({"num_processes": 8, "generation_batch_size": 1000}, "must divide by per_device_train_batch_size"),
        ({"num_processes": 8, "steps_per_generation": 4}, "not both"),
        ({"num_processes": 8, "num_generations": 1}, "needs >= 2"),
        ({"num_processes": 8, "num_generations": 24}, "whole groups"),
        ({"num_processes": 0}, "num_processes=0"),
    ],
)
def test_batches_that_cannot_run_are_refused_in_one_line(kwargs, message):
    with pytest.raises(BatchError, match=message) as err:
        resolve_batch(**{**PAPER, **kwargs})
    assert "\n" not in str(err.value)


def test_without_responses_per_step_the_mini_batch_grows_with_the_processes():
    # the tiny recipes: 64 per device, 2 mini-batches per rollout, 2 epochs
    one = resolve_batch(num_processes=1, per_device_train_batch_size=64, num_generations=8, steps_per_generation=2,
                        num_iterations=2)  # fmt: skip
    two = resolve_batch(num_processes=2, per_device_train_batch_size=64, num_generations=8, steps_per_generation=2,
                        num_iterations=2)  # fmt: skip
    assert (one.responses_per_step, one.generation_batch_size, one.optimizer_steps_per_rollout) == (64, 128, 4)
    assert (two.responses_per_step, two.generation_batch_size, two.optimizer_steps_per_rollout) == (128, 256, 4)
    # TRL's default: a rollout is one mini-batch
    plain = resolve_batch(num_processes=2, per_device_train_batch_size=4, num_generations=4,
                          gradient_accumulation_steps=3)  # fmt: skip
    assert plain.generation_batch_size == plain.responses_per_step == 24 and plain.steps_per_generation == 3


def _schedule(keep, processes=1, rank=0, **kwargs):
    settings = dict(responses_per_step=8, micro_batch=2, num_iterations=1, seed=0)
    return rollout_schedule(torch.tensor(keep), num_processes=processes, process_index=rank, **{**settings, **kwargs})


def test_every_kept_row_once_per_epoch_and_fewer_rows_fewer_steps():
    keep = [True] * 16
    assert len(_schedule(keep)) == 2 and len(_schedule(keep, num_iterations=3)) == 6
    half = [i < 8 for i in range(16)]
    steps = _schedule(half, num_iterations=3)
    assert len(steps) == 3  # 8 kept rows: one mini-batch per epoch
    for epoch in steps:
        assert sorted(i for micro in epoch for i in micro) == list(range(8))
    assert steps[0] == steps[1] == steps[2]  # one shuffle per rollout, replayed each epoch
    assert len(_schedule([i < 9 for i in range(16)])) == 2  # 9 rows: a full mini-batch and a short one
    assert _schedule([False] * 16, num_iterations=3) == []  # all groups uniform: no optimizer step at all


def test_processes_share_each_step_evenly_and_run_as_many_micro_batches():
    keep = [i % 3 != 0 for i in range(24)]  # 16 kept rows: 2 steps of 8
    per_rank = [_schedule(keep, processes=3, rank=r) for r in range(3)]
    for step in range(2):
        micros = [per_rank[r][step] for r in range(3)]
        assert len({len(m) for m in micros}) == 1  # lockstep: collectives match
        rows = [i for m in micros for micro in m for i in micro]
        assert len(rows) == len(set(rows)) == 8
        sizes = [sum(len(micro) for micro in m) for m in micros]
        assert max(sizes) - min(sizes) <= 1
    # a step with fewer rows than processes: the idle processes run an empty micro-batch
    lone = _schedule([i == 5 for i in range(24)], processes=3, rank=2)
    assert lone == [[[]]]
