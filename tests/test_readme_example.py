"""The README's Python examples run as written, so they cannot go stale.

Every ```python block of README.md runs here. The trainer example trains a locally built, untrained tiny model in
place of the Hub id it names (offline, two rollouts: the config, the trainer, generation and the reward's call with
the dataset's columns; its rewards are all 0, so no update is made: tests/test_trainer.py covers the loss). The
others run as they are, and each states its output: a line ``print(...)  # <output>`` must print ``<output>``.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from paths import ROOT

from archer.objective import ObjectiveConfig

README = ROOT / "README.md"
HUB_MODEL_LINE = 'model = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # a Hub id or a local folder'


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def trainer_block() -> str:
    (block,) = [b for b in python_blocks() if "ArcherTrainer(" in b]
    return block


OTHER_BLOCKS = [b for b in python_blocks() if "ArcherTrainer(" not in b]


def expected_prints(block: str) -> list[str]:
    """The outputs written beside one-line ``print(...)`` calls: ``print(x)  # output``."""
    return [m.group(1) for m in re.finditer(r"^print\(.*\)\s+# (.+)$", block, flags=re.MULTILINE)]


def run_block(block: str, name: str) -> tuple[dict, str]:
    namespace: dict = {"__name__": f"readme_{name}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"README.md ({name})", "exec"), namespace)
    return namespace, out.getvalue()


def test_the_readme_shows_the_python_api():
    blocks = python_blocks()
    assert len(blocks) >= 4  # the trainer, the objective, the rewards, evaluate
    block = trainer_block()
    assert "from archer import ArcherConfig, ArcherTrainer, ObjectiveConfig" in block and "trainer.train()" in block
    assert "objective=ObjectiveConfig(" in block  # the objective as an object, as TRL users configure a trainer
    assert "from archer.rewards import" in block  # a reward function of the package, not one written inline
    code = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 20, f"the trainer example has {len(code)} lines of code: keep it about a dozen"


def test_trainer_example_trains(tiny_model_dir, workdir):
    block = trainer_block()
    assert block.count(HUB_MODEL_LINE) == 1, "the example's model line changed: update HUB_MODEL_LINE"
    namespace, printed = run_block(block.replace(HUB_MODEL_LINE, f"model = {str(tiny_model_dir)!r}"), "trainer")
    trainer, args = namespace["trainer"], namespace["args"]
    assert trainer.state.global_step == args.max_steps == 2  # every rollout ran
    assert (workdir / args.output_dir / f"checkpoint-{args.max_steps}" / "model.safetensors").is_file()
    assert printed.splitlines()[-1] == "archer {}"  # as the comment says
    assert trainer.objective_config == ObjectiveConfig.preset(
        "archer", max_completion_length=args.max_completion_length
    )


@pytest.mark.parametrize("index", range(len(OTHER_BLOCKS)))
def test_other_examples_print_what_they_say(index, monkeypatch):
    block = OTHER_BLOCKS[index]
    monkeypatch.chdir(ROOT)  # evaluate.load("metrics/archer_math"), as from a checkout
    assert expected_prints(block), f"README block {index}: say what it prints, `print(...)  # output`"
    _, printed = run_block(block, f"block {index}")
    lines = printed.splitlines()
    for expected in expected_prints(block):
        assert expected in lines, f"README block {index} says it prints {expected!r}; it printed {lines}"
