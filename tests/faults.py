"""`archer` with a fault injected, for tests that need a real process to fail at a chosen moment.

    python tests/faults.py FAULT [archer arguments ...]       (also as the script of `accelerate launch`)

FAULT is ``none`` or one of:
- ``slow-save:SECONDS:MARKER``: every checkpoint save, once its RNG state is written and before
  ``trainer_state.json`` (the file that makes it complete), creates ``MARKER-checkpoint-<step>.<rank>`` and sleeps
  SECONDS;
- ``slow-build:SECONDS:MARKER``: building the trainer creates ``MARKER.<rank>`` first and sleeps SECONDS;
- ``enospc:STEP``: writing ``optimizer.pt`` of ``checkpoint-STEP`` stops halfway with OSError(ENOSPC), as a full
  disk does;
- ``stall-filter:N:MARKER``: `archer filter`, once it has written its N-th shard, creates ``MARKER`` and sleeps
  an hour (for a test to kill it there).
"""

from __future__ import annotations

import errno
import io
import os
import sys
import time
from pathlib import Path


def _touch_and_sleep(seconds: float, marker: str) -> None:
    Path(f"{marker}.{os.environ.get('RANK', '0')}").touch()  # one marker per process
    time.sleep(seconds)


def install(fault: str) -> None:
    kind, _, arg = fault.partition(":")
    if kind == "none":
        return
    if kind == "slow-save":
        from transformers import Trainer

        seconds, marker = arg.split(":", 1)
        original = Trainer._save_rng_state

        def save_rng_state(self, output_dir):
            original(self, output_dir)
            _touch_and_sleep(float(seconds), f"{marker}-{Path(output_dir).name}")  # <marker>-checkpoint-<step>

        Trainer._save_rng_state = save_rng_state
    elif kind == "slow-build":
        from archer.training import pipeline

        seconds, marker = arg.split(":", 1)
        build = pipeline._build_trainer

        def build_trainer(*args, **kwargs):
            _touch_and_sleep(float(seconds), marker)
            return build(*args, **kwargs)

        pipeline._build_trainer = build_trainer
    elif kind == "enospc":
        import torch

        target = os.path.join(f"checkpoint-{int(arg)}", "optimizer.pt")
        save = torch.save

        def torch_save(obj, f, *args, **kwargs):
            if not (isinstance(f, (str, os.PathLike)) and os.fspath(f).endswith(target)):
                return save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(f))

        torch.save = torch_save
    elif kind == "stall-filter":
        from archer.data import filtering

        count, marker = arg.split(":", 1)
        write_shard, written = filtering.write_shard, []

        def stalling_write_shard(partial, record):
            write_shard(partial, record)
            written.append(record["shard"])
            if len(written) == int(count):
                Path(marker).touch()
                time.sleep(3600)

        filtering.write_shard = stalling_write_shard
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from archer.cli import main

    sys.exit(main(sys.argv[2:]))
