"""`pip install` works, not only a checkout: the wheel, installed into a fresh venv outside the checkout, trains,
evaluates and writes a model card from another directory, reading its tasks, suites, recipes and card template
as package data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from paths import ROOT

SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "src", "eval", "model_cards", "recipes")
pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """A venv holding only the wheel; the shared venv's dependencies reached through a .pth file (offline)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # the build writes build/ and *.egg-info: never into the checkout
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    build = ["wheel", "--no-deps", "--no-build-isolation", "--check-build-dependencies", "-w", str(tmp / "dist")]
    run([*pip, *build, str(source)], tmp, env)
    (wheel,) = (tmp / "dist").glob("archer_rlvr-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], tmp, env)
    # After the install (pip would otherwise see the shared venv's editable archer-rlvr as installed): the
    # dependencies come from this interpreter's site folders, whose own .pth files (the editable checkout) a path
    # listed in a .pth file does not run.
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).strip()
    site_dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (Path(purelib) / "shared-deps.pth").write_text("".join(f"{p}\n" for p in site_dirs))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, env, wheel


def test_wheel_carries_the_package_data(installed):
    *_, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "archer/assets/eval/archer_tasks.py",
        "archer/assets/eval/suites/paper.yaml",
        "archer/assets/eval/suites/tiny.yaml",
        "archer/assets/model_cards/archer_model_card.md",
        "archer/assets/recipes/tiny/smoke.yaml",
        "archer/data/model_configs/deepseek-ai--DeepSeek-R1-Distill-Qwen-1.5B.json",
    ):
        assert expected in names
    # one source: the packaged files are the checkout's top-level files, byte for byte
    with zipfile.ZipFile(wheel) as z:
        assert z.read("archer/assets/eval/archer_tasks.py") == (ROOT / "eval" / "archer_tasks.py").read_bytes()


def test_installed_wheel_trains_evaluates_and_writes_a_card_elsewhere(installed, tmp_path):
    venv, env, _ = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([str(venv / "bin" / "python"), "-c", "import archer; print(archer.__file__)"], work, env).strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(ROOT)

    archer = str(venv / "bin" / "archer")
    # a few steps of the packaged smoke recipe, given by name; the end-of-run card needs the packaged template
    overrides = ["sft.steps=4", "data.heldout_examples=4", "trainer.max_steps=2", "trainer.save_steps=100"]
    run([archer, "train", "tiny/smoke", *overrides], work, env)
    run_dir = work / "outputs" / "tiny-smoke"
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "README.md").is_file()

    # the packaged tiny suite by name (its task module is package data too), small k
    out = run([archer, "eval", "--model", str(run_dir), "--suite", "tiny", "--limit", "2"], work, env)
    assert "| arithmetic | 8 | 2 |" in out
    # the end-of-run avg@8 of `archer train` (a tiny recipe) made the first folder, this command the newest
    *_, results = sorted(run_dir.glob("eval/*/results.json"))
    assert json.loads(results.read_text())["tasks"]["arithmetic"]["num_problems"] == 2

    (run_dir / "README.md").unlink()
    run([archer, "card", str(run_dir)], work, env)
    card = (run_dir / "README.md").read_text()
    assert "arithmetic" in card and "model-index" in card
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]  # nothing else written where it ran
