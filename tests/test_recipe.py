"""Recipe parsing: every user mistake is one line naming file and key, exit code 2, nothing written."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from paths import ROOT

from archer.errors import UserError
from archer.recipe import load_recipe

TINY_RECIPES = sorted((ROOT / "recipes" / "tiny").glob("*.yaml"))


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
            "max_steps": 4,
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
        (
            lambda r: r["trainer"].update(gradient_checkpointing=True),
            "trainer.gradient_checkpointing: deprecated in transformers 5 .*; write trainer.activation_checkpointing",
        ),
        (lambda r: r["data"].update(dataset="org/some-dataset"), "data.dataset: the tiny model only knows"),
        # ranges TRL does not check (or checks only once models are built)
        (lambda r: r["trainer"].update(per_device_train_batch_size=0), r"per_device_train_batch_size=0: must be >= 1"),
        (lambda r: r["trainer"].update(per_device_train_batch_size=-8), "per_device_train_batch_size=-8: must be"),
        (lambda r: r["trainer"].update(learning_rate=-1e-4), r"trainer.learning_rate=-0.0001: must be >= 0"),
        (lambda r: r["trainer"].update(learning_rate=float("nan")), "trainer.learning_rate=nan: must be >= 0"),
        (lambda r: r["trainer"].update(num_generations=0), r"trainer.num_generations=0: must be >= 2"),
        (lambda r: r["trainer"].update(max_steps=0), r"trainer.max_steps=0: must be >= 1"),
        (lambda r: r["trainer"].pop("max_steps"), "trainer.max_steps: not set"),
        (lambda r: r["trainer"].update(temperature=0), "trainer.temperature=0.0: must be > 0"),
        (lambda r: r["data"].update(rewards=["maths"]), "data.rewards: unknown reward 'maths'; valid: "),
        (lambda r: r["data"].update(loader="deepscale"), "data.loader: unknown loader 'deepscale'; valid: "),
        # TRL's own ValueErrors, one line
        (
            lambda r: r["trainer"].update(generation_batch_size=16, steps_per_generation=2),
            "trainer: set generation_batch_size or steps_per_generation, not both",
        ),
        (lambda r: r["trainer"].update(auto_find_batch_size=True), "trainer: auto_find_batch_size is not supported"),
        # `X | None` fields are type-checked like the others
        (lambda r: r["trainer"].update(bf16="yes please"), r"trainer.bf16: expected bool or null, got 'yes please'"),
        (lambda r: r["trainer"].update(save_total_limit="3"), r"trainer.save_total_limit: expected int or null"),
        (
            lambda r: r["trainer"].update(lr_scheduler_type="sometimes"),
            "trainer: sometimes is not a valid SchedulerType",
        ),
        (lambda r: r["model"].update(cpu_threads=[1]), r"model.cpu_threads: expected int or null"),
        (lambda r: r["model"].update(tiny={"hiden_size": 64}), "model.tiny.hiden_size: unknown key"),
        (lambda r: r["model"].update(tiny={"hidden_size": "big"}), "model.tiny.hidden_size: expected int"),
        (lambda r: r["data"].update(task={"max_operand": "x"}), "data.task.max_operand"),
        (lambda r: r["sft"].update(steps=0) if "sft" in r else r.update(sft={"steps": 0}), "sft.steps=0"),
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


def test_building_the_trainer_config_raises_no_deprecation_warning(tmp_path):
    """TRL's default (gradient_checkpointing=True) goes to transformers under its new name: an error found while the
    arguments are built is not preceded by transformers' FutureWarning about the old one."""
    import warnings

    raw = base(tmp_path)
    raw["trainer"].pop("report_to")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe = load_recipe(write(tmp_path, raw))
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert recipe.trainer.activation_checkpointing is True  # TRL's default, kept
    raw["trainer"]["activation_checkpointing"] = False
    assert load_recipe(write(tmp_path, raw)).trainer.activation_checkpointing is False


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


# --------------------------------------------------------------------------------------------------------------
# Inputs that used to end in a traceback, a long stall or a default run: one line, exit 2, nothing written

ALIAS_BOMB = (
    "trainer:\n  report_to: ["
    + ", ".join(
        [f"&l0 [{', '.join(['x'] * 10)}]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    )
    + "]\n"
)  # 1 KB that stands for 10^9 strings


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (recipe file, overrides, expected message) for each bad input: values, keys, files, YAML, overrides."""
    good = base(tmp_path)

    def recipe(name: str, raw: dict | None = None, text: bytes | None = None) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_bytes(text if text is not None else yaml.safe_dump(raw).encode())
        return path

    def trainer(**values) -> dict:
        return {**good, "trainer": {**good["trainer"], **values}}

    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "qwen2", ')
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(50 * 2**20)
    return {
        "batch size 0": (recipe("b0", trainer(per_device_train_batch_size=0)), [], "must be >= 1"),
        "negative batch size": (recipe("bn", trainer(per_device_train_batch_size=-8)), [], "must be >= 1"),
        "negative learning rate": (recipe("lr", trainer(learning_rate=-0.1)), [], "learning_rate=-0.1: must be >= 0"),
        "num_generations 0": (recipe("g0", trainer(num_generations=0)), [], "num_generations=0: must be >= 2"),
        "bf16 as a sentence": (recipe("bf16", trainer(bf16="yes please")), [], "trainer.bf16: expected bool"),
        "unknown tiny key": (recipe("tiny", {**good, "model": {"tiny": {"layers": 2}}}), [], "model.tiny.layers"),
        "empty file": (recipe("empty", text=b""), [], "the recipe is empty"),
        "max_steps 0": (recipe("m0", trainer(max_steps=0)), [], "max_steps=0: must be >= 1"),
        "not UTF-8": (recipe("latin1", text="trainer: {run_name: caf\xe9}\n".encode("latin-1")), [], "not UTF-8"),
        "bad override": (recipe("ok", good), ["trainer.max_steps=[1"], "override 'trainer.max_steps=[1': not valid"),
        "output_dir is a file": (recipe("out", trainer(output_dir=str(tmp_path / "a_file"))), [], "is a file"),
        "output_dir under a file": (recipe("out2", trainer(output_dir=str(tmp_path / "a_file" / "x"))), [], "a file"),
        "corrupt config.json": (
            recipe("cfg", {**good, "model": {"name_or_path": str(tmp_path / "model")}, "data": {"dataset": "o/d"}}),
            [],
            "config.json is not valid JSON",
        ),
        "50 MB recipe": (huge, [], "at most 1,048,576 are read"),
        "alias bomb": (recipe("bomb", text=ALIAS_BOMB.encode()), [], "once aliases are expanded"),
        "self-referencing alias": (recipe("loop", text=b"trainer: &t {report_to: [*t]}\n"), [], "aliases"),
        "huge key": (recipe("key", trainer(**{"k" * 100_000: 1})), [], "unknown key"),
    }


BAD_INPUTS = [
    "batch size 0",
    "negative batch size",
    "negative learning rate",
    "num_generations 0",
    "bf16 as a sentence",
    "unknown tiny key",
    "empty file",
    "max_steps 0",
    "not UTF-8",
    "bad override",
    "output_dir is a file",
    "output_dir under a file",
    "corrupt config.json",
    "50 MB recipe",
    "alias bomb",
    "self-referencing alias",
    "huge key",
]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_short_line_exit_2_and_nothing_written(tmp_path, capsys, name):
    from archer.cli import main

    cases = bad_inputs(tmp_path)
    assert sorted(cases) == sorted(BAD_INPUTS)
    path, overrides, expected = cases[name]
    before = sorted(tmp_path.rglob("*"))
    started = time.perf_counter()
    assert main(["train", str(path), *overrides]) == 2
    assert time.perf_counter() - started < 10  # no stall on size or aliases (the slow case took minutes)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err[:500]
    assert expected in err
    assert len(err) <= 320  # error lines are cut to a readable length
    assert sorted(tmp_path.rglob("*")) == before  # no run folder, no sft/, no config.yaml


def test_alias_bomb_costs_nothing_and_aliases_still_work(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 1200
    started = time.perf_counter()
    with pytest.raises(UserError, match="once aliases are expanded"):
        load_recipe(path)
    assert time.perf_counter() - started < 2
    raw = base(tmp_path)
    text = yaml.safe_dump(raw).replace("report_to: none", "report_to: &r none\n  run_name: *r")
    recipe = load_recipe(write_text(tmp_path / "alias.yaml", text))
    assert recipe.trainer.run_name == "none"


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
