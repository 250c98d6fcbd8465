"""Recipe parsing: every user mistake is one line naming file and key, exit code 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from archer.errors import UserError
from archer.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPES = sorted((REPO / "recipes" / "tiny").glob("*.yaml"))


def write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def base(tmp_path: Path, **trainer) -> dict:
    return {
        "model": {"name_or_path": "tiny"},
        "data": {"dataset": "arithmetic"},
        "objective": {"preset": "archer"},
        "trainer": {
            "output_dir": str(tmp_path / "out"),
            "num_generations": 4,
            "per_device_train_batch_size": 8,
            "report_to": "none",
            **trainer,
        },
    }


@pytest.mark.parametrize("path", TINY_RECIPES, ids=lambda p: p.name)
def test_shipped_tiny_recipes_parse(path):
    recipe = load_recipe(path)
    assert recipe.model.is_tiny
    resolved = recipe.resolved()
    assert resolved["objective"]["preset"] == recipe.raw["objective"]["preset"]
    yaml.safe_dump(resolved)  # the resolved config is plain YAML


def test_values_reach_the_configs(tmp_path):
    recipe = load_recipe(write(tmp_path, base(tmp_path, learning_rate="1e-4", max_steps=7)))
    assert recipe.trainer.learning_rate == pytest.approx(1e-4)  # YAML reads 1e-4 as a string: coerced
    assert recipe.trainer.max_steps == 7
    objective = recipe.trainer.objective_config()
    assert objective.reasoning_clip == (0.5, 0.5) and objective.knowledge_kl == 0.001
    assert recipe.trainer.beta == pytest.approx(0.001)  # TRL loads the reference model because the KL needs it


def test_objective_overrides_and_presets(tmp_path):
    raw = base(tmp_path)
    raw["objective"] = {"preset": "dapo"}
    assert load_recipe(write(tmp_path, raw)).trainer.beta == 0.0
    raw["objective"] = {"preset": "archer", "knowledge_kl": 0.005, "entropy_quantile": 0.7}
    cfg = load_recipe(write(tmp_path, raw)).trainer.objective_config()
    assert (cfg.knowledge_kl, cfg.entropy_quantile) == (0.005, 0.7)


def test_command_line_overrides(tmp_path):
    recipe = load_recipe(write(tmp_path, base(tmp_path)), ["trainer.max_steps=3", "objective.reasoning_clip=0.4"])
    assert recipe.trainer.max_steps == 3
    assert recipe.trainer.objective_config().reasoning_clip == (0.4, 0.4)
    with pytest.raises(UserError, match="block.key=value"):
        load_recipe(write(tmp_path, base(tmp_path)), ["max_steps=3"])


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.update(extra={}), "unknown block 'extra'"),
        (lambda r: r["trainer"].update(learnin_rate=1.0), "trainer.learnin_rate: unknown key"),
        (lambda r: r["trainer"].update(learning_rate="fast"), "trainer.learning_rate: expected float"),
        (lambda r: r["trainer"].update(max_steps=2.5), "trainer.max_steps: expected int"),
        (lambda r: r["data"].update(rewards="math"), "data.rewards: expected list"),
        (lambda r: r["model"].update(dtype="float8"), "model: dtype 'float8' is not one of"),
        (lambda r: r["model"].update(name_or_path="./no/such/model"), "model.name_or_path: ./no/such/model does not"),
        (lambda r: r["objective"].update(preset="ppo"), "objective:"),
        (lambda r: r["objective"].update(reasoning_clip=-1), "objective:"),
        (lambda r: r["trainer"].update(per_device_train_batch_size=6), "trainer:.*whole groups of num_generations"),
        (lambda r: r["trainer"].update(beta=0.1), "trainer.beta"),
        (lambda r: r["data"].update(dataset="org/some-dataset"), "data.dataset: the tiny model only knows"),
    ],
)
def test_bad_recipes_fail_with_one_line(tmp_path, mutate, expected):
    raw = base(tmp_path)
    mutate(raw)
    path = write(tmp_path, raw)
    with pytest.raises(UserError, match=expected) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)


def test_cli_exit_code_two_and_nothing_written(tmp_path):
    raw = base(tmp_path, learnin_rate=1.0)
    path = write(tmp_path, raw)
    proc = subprocess.run(
        [sys.executable, "-m", "archer.cli", "train", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and "trainer.learnin_rate" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_checkpoint_pushes_need_a_repo(tmp_path):
    path = write(tmp_path, base(tmp_path, push_checkpoints=True))
    with pytest.raises(UserError, match="push_checkpoints needs hub_model_id"):
        load_recipe(path)
    assert not (tmp_path / "out").exists()
