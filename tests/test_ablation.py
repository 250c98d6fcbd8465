"""`archer ablate`: planning (shared warm starts, checks), the statistics, the tables, and a few-step end-to-end run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from paths import ROOT

from archer.ablation.plan import Variant, plan_ablation, variants_from_recipes
from archer.ablation.report import BLOCK_BEGIN, BLOCK_END, render_markdown, summarize, update_block
from archer.ablation.stats import mean_ci
from archer.errors import UserError
from archer.recipe import load_recipe

SMOKE = ROOT / "recipes" / "tiny" / "smoke.yaml"
TINY = [ROOT / "recipes" / "tiny" / f"{name}.yaml" for name in ("archer", "dapo", "grpo", "entropy_mask")]


def smoke_variants(*presets: str) -> list[Variant]:
    return [Variant(p, str(SMOKE), (f"objective.preset={p}",)) for p in presets]


def test_t_intervals():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert math.isnan(mean_ci([])[0])
    mean, half = mean_ci([1.0, 3.0, float("nan")])  # a missing value is left out, not averaged in
    assert mean == 2.0 and half == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))


def test_the_default_recipes_share_warm_starts_and_differ_only_in_the_objective(tmp_path):
    plan = plan_ablation(variants_from_recipes([str(p) for p in TINY]), seeds=3, out=tmp_path)
    assert plan.names == ["archer", "dapo", "grpo", "entropy_mask"]
    assert len(plan.runs) == 12 and len(plan.warm_starts) == 3  # one SFT per seed, reused by every objective
    for seed in range(3):
        runs = [r for r in plan.runs if r.seed == seed]
        assert len({r.warm_dir for r in runs}) == 1
        assert f"sft.seed={seed}" in runs[0].overrides and f"trainer.seed={42 + seed}" in runs[0].overrides
    assert not any(tmp_path.iterdir())  # planning writes nothing
    # Outside the objective block and the output folder, the four recipes are the same recipe.
    blocks = [yaml.safe_load(p.read_text()) for p in TINY]
    for block in blocks:
        block.pop("objective")
        block["trainer"].pop("output_dir")
    assert all(b == blocks[0] for b in blocks[1:])


def test_a_different_sft_gets_its_own_warm_start(tmp_path):
    variants = [Variant("a", str(SMOKE)), Variant("b", str(SMOKE), ("sft.steps=31",))]
    plan = plan_ablation(variants, seeds=1, out=tmp_path)
    assert len(plan.warm_starts) == 2


@pytest.mark.parametrize(
    ("variants", "seeds", "message"),
    [
        ([], 2, "name at least one recipe"),
        ([Variant("a", str(SMOKE))], 0, "--seeds 0"),
        ([Variant("a", str(SMOKE)), Variant("a", str(SMOKE))], 1, "appears twice"),
        ([Variant("a", str(ROOT / "recipes" / "Qwen3-4B" / "archer" / "math.yaml"))], 1, "runs tiny recipes"),
        ([Variant("a", str(SMOKE), ("trainer.nonsense=1",))], 1, "trainer.nonsense"),
    ],
)
def test_bad_requests_fail_in_one_line_before_anything_is_written(tmp_path, variants, seeds, message):
    with pytest.raises(UserError, match=message) as err:
        plan_ablation(variants, seeds, out=tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_run_folder_made_with_other_settings_is_not_reused(tmp_path):
    plan = plan_ablation(smoke_variants("archer"), seeds=1, out=tmp_path)
    run = plan.runs[0]
    run.out_dir.mkdir(parents=True)
    (run.out_dir / "config.yaml").write_text(yaml.safe_dump(load_recipe(SMOKE, list(run.overrides)).resolved()))
    plan_ablation(smoke_variants("archer"), seeds=1, out=tmp_path)  # same settings: reusable
    with pytest.raises(UserError, match="trained with other settings"):
        plan_ablation(
            [Variant("archer", str(SMOKE), ("objective.preset=archer", "trainer.learning_rate=1e-3"))], 1, tmp_path
        )


def fake_run(run_dir: Path, before: float, after: float, greedy: tuple[float, float], reward: float) -> None:
    run_dir.mkdir(parents=True)
    results = {
        "heldout_sampled_accuracy_before": before,
        "heldout_sampled_accuracy_after": after,
        "heldout_accuracy_before": greedy[0],
        "heldout_accuracy_after": greedy[1],
        "heldout_worked_frac_after": 1.0,
        "rl_runtime_s": 60.0,
    }
    (run_dir / "train_results.json").write_text(json.dumps(results))
    lines = [
        {"step": s, "reward": reward * s / 20, "entropy/mean": 0.5, "reasoning/clip_high_frac": 0.01}
        for s in range(1, 21)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_summary_tables_and_paired_differences(tmp_path):
    plan = plan_ablation(smoke_variants("archer", "dapo"), seeds=3, out=tmp_path)
    afters = {"archer": [0.80, 0.90, 0.70], "dapo": [0.85, 0.80, 0.75]}
    for run in plan.runs:
        after = afters[run.name][run.seed]
        fake_run(run.out_dir, 0.6, after, (0.5, after), reward=after)
    summary = summarize(plan, "archer ablate x --seeds 3")
    mean, half = summary["table"]["archer"]["avg8_after"]
    assert mean == pytest.approx(80.0) and half == pytest.approx(4.303 * 10.0 / math.sqrt(3))
    assert summary["table"]["dapo"]["avg8_gain"][0] == pytest.approx(20.0)
    # reward: the mean over the last 10 % of steps (2 of 20): (19 + 20) / 2 / 20 * after
    assert summary["table"]["archer"]["reward"][0] == pytest.approx(0.8 * 19.5 / 20)
    assert summary["table"]["archer"]["r_clip_high"][0] == pytest.approx(1.0)  # percent
    paired = summary["paired"]["dapo"]["avg8_after"]
    assert paired["per_seed"] == pytest.approx({0: 5.0, 1: -10.0, 2: 5.0})
    assert (paired["wins"], paired["losses"]) == (2, 1)
    text = render_markdown(summary)
    assert "`archer ablate x --seeds 3`" in text
    assert "| dapo | avg@8 | +5.0 | -10.0 | +5.0 | 0.0 ± " in text
    avg8, greedy = text.split("Held-out avg@8 (T 0.8) (%) per seed")[1].split("Held-out greedy (%) per seed")
    assert "| 1 | 60.0 → 90.0 (+30.0) | 60.0 → 80.0 (+20.0) |" in avg8
    assert "| 1 | 50.0 → 90.0 (+40.0) | 50.0 → 80.0 (+30.0) |" in greedy.split("Paired")[0]
    # "after SFT" is the recorded value, the same for runs sharing a warm start (after - gain can round apart)
    shared = plan_ablation(smoke_variants("archer", "dapo"), seeds=3, out=tmp_path / "shared")
    for run in shared.runs:
        fake_run(run.out_dir, 0.5815, afters[run.name][run.seed], (0.5, 0.6), reward=0.5)
    per_seed = render_markdown(summarize(shared, "x")).split("Held-out avg@8 (T 0.8) (%) per seed")[1]
    assert set(re.findall(r"\| ([\d.]+) → ", per_seed.split("Held-out")[0])) == {f"{100 * 0.5815:.1f}"}
    # the summary survives a JSON round trip (seeds become strings) and renders the same
    again = json.loads(json.dumps(summary, default=str))
    assert render_markdown(again) == text


def test_doc_block_is_replaced_between_markers_only(tmp_path):
    doc = tmp_path / "ablations.md"
    doc.write_text(f"# title\n\nbefore\n{BLOCK_BEGIN}\nold table\n{BLOCK_END}\nafter\n")
    update_block(doc, "| new | table |\n")
    assert doc.read_text() == f"# title\n\nbefore\n{BLOCK_BEGIN}\n| new | table |\n{BLOCK_END}\nafter\n"
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(UserError, match="no .* block"):
        update_block(tmp_path / "plain.md", "x")


def test_make_ablate_regenerates_the_one_block_there_is():
    """`make ablate` names the file holding the generated block (docs/ablations.md), and no other page keeps a copy."""
    target = re.search(r"--doc ([^\s)]+)", (ROOT / "Makefile").read_text())
    assert target and target.group(1) == "docs/ablations.md"
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "eval" / "README.md"]
    holders = [p.relative_to(ROOT).as_posix() for p in pages if BLOCK_BEGIN in p.read_text()]
    assert holders == ["docs/ablations.md"]
    text = (ROOT / "docs" / "ablations.md").read_text()
    assert text.count(BLOCK_BEGIN) == text.count(BLOCK_END) == 1 and text.index(BLOCK_BEGIN) < text.index(BLOCK_END)


@pytest.mark.slow
def test_ablate_runs_few_steps_over_two_seeds_and_resumes(tmp_path):
    """The driver end to end: 2 objectives x 2 seeds of a few steps, 2 workers, then a second call that reuses all."""
    dapo = tmp_path / "smoke_dapo.yaml"
    recipe = yaml.safe_load(SMOKE.read_text())
    recipe["objective"] = {"preset": "dapo"}
    dapo.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "ablate"
    args = [sys.executable, "-m", "archer.cli", "ablate", str(SMOKE), str(dapo), "--seeds", "2", "--out", str(out)]
    args += ["--workers", "2", "--set", "data.heldout_examples=8", "--set", "trainer.max_steps=2"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([p for p in (out / "warm_starts").iterdir() if p.is_dir()]) == 2  # one per seed, shared
    for seed in (0, 1):
        weights = [
            (out / name / f"seed{seed}" / "sft" / "model.safetensors").read_bytes() for name in ("smoke", "smoke_dapo")
        ]
        assert weights[0] == weights[1]  # both objectives start from the same model
        results = json.loads((out / "smoke" / f"seed{seed}" / "train_results.json").read_text())
        assert results["global_step"] == 2 and 0 <= results["heldout_sampled_accuracy_after"] <= 1
    summary = json.loads((out / "ablation.json").read_text())
    assert set(summary["per_run"]["smoke_dapo"]) == {"0", "1"}
    assert set(summary["paired"]) == {"smoke_dapo"}
    assert (out / "learning_curves.png").read_bytes().startswith(b"\x89PNG")
    assert "Paired differences against smoke" in proc.stdout
    stamp = (out / "smoke" / "seed0" / "train_results.json").stat().st_mtime_ns

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stderr
    assert (out / "smoke" / "seed0" / "train_results.json").stat().st_mtime_ns == stamp
    assert again.stdout == proc.stdout
