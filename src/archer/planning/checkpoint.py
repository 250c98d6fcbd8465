"""How big a training checkpoint is and how long writing it takes: the dry run's preemption line, the full-disk
message, and the grace period a Slurm job asks for before its time limit (``--signal=B:USR1@<seconds>``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3
DEFAULT_WRITE_MB_S = 200.0  # a shared cluster file system under load (NFS, a busy Lustre): set yours
SIGNAL_MARGIN_S = 60  # process start-up of the save, the launcher's shutdown, the file system's slow moments


@dataclass(frozen=True)
class CheckpointSize:
    """Bytes of one ``checkpoint-<step>/`` folder, by part (the optimizer, scheduler and RNG files are the rest)."""

    weights: float  # model.safetensors
    optimizer: float  # optimizer.pt, or DeepSpeed's global_step*/ shards (all processes together)
    described: str  # what the parts hold, in words

    @property
    def total(self) -> float:
        return self.weights + self.optimizer

    def save_seconds(self, write_mb_s: float) -> float:
        return self.total / (write_mb_s * 1e6)


def checkpoint_size(num_parameters: int, weights_bytes: int, deepspeed_mixed: bool) -> CheckpointSize:
    """One checkpoint of a model of ``num_parameters`` trained with AdamW.

    ``weights_bytes``: bytes per parameter of the weights as trained (archer.planning.precision: float32 unless
    DeepSpeed's mixed precision holds them in 16 bits). Without DeepSpeed's mixed precision the optimizer file
    holds Adam's two moments in the weights' dtype; with it, DeepSpeed's shards hold the fp32 master weights and
    both moments (12 bytes per parameter) and the 16-bit model is saved beside them.
    """
    if deepspeed_mixed:
        return CheckpointSize(
            weights=num_parameters * weights_bytes,
            optimizer=num_parameters * 12.0,
            described="16-bit weights; fp32 master weights and Adam moments in DeepSpeed's shards",
        )
    return CheckpointSize(
        weights=num_parameters * weights_bytes,
        optimizer=num_parameters * 2.0 * weights_bytes,
        described=f"{8 * weights_bytes}-bit weights + Adam moments",
    )


def signal_grace_seconds(save_s: float, rollout_s: float | None) -> int | None:
    """Seconds before the time limit a job should get its signal: the rest of the rollout in progress (at most
    one rollout), the save, and a margin; rounded up to 10 s. None when the rollout time is unknown."""
    if rollout_s is None:
        return None
    return int(math.ceil((rollout_s + save_s + SIGNAL_MARGIN_S) / 10.0) * 10)


def preemption_lines(size: CheckpointSize, write_mb_s: float, rollout_s: float | None) -> list[str]:
    """The dry run's lines: checkpoint size, save time at ``write_mb_s``, and the ``--signal`` to request."""
    save_s = size.save_seconds(write_mb_s)
    lines = [
        f"checkpoint: ~{format_size(size.total)} per save ({size.described}); at {write_mb_s:g} MB/s "
        f"(--write-mb-s) a save takes ~{save_s:.0f} s",
    ]
    grace = signal_grace_seconds(save_s, rollout_s)
    if grace is None:
        lines.append(
            "preemption: on SIGTERM / SIGUSR1 the rollout in progress finishes, then the checkpoint is saved and "
            f"the run exits 75: request --signal=B:USR1@<one rollout's seconds + {save_s + SIGNAL_MARGIN_S:.0f}> "
            "(--rollout-seconds S computes it; a rollout's time is the s/it of the training log)"
        )
    else:
        lines.append(
            "preemption: on SIGTERM / SIGUSR1 the rollout in progress finishes, then the checkpoint is saved and "
            f"the run exits 75: request --signal=B:USR1@{grace} ({rollout_s:g} s rollout + {save_s:.0f} s save + "
            f"{SIGNAL_MARGIN_S} s margin)"
        )
    return lines


def format_size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"
