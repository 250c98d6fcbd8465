"""Package data: one source (the checkout's eval/, model_cards/, recipes/), found by name from any directory."""

from pathlib import Path

from paths import ROOT

from archer.resources import asset, model_card_template, packaged_names, resolve_yaml, tasks_module


def test_assets_are_links_to_the_top_level_folders():
    for name in ("eval", "model_cards", "recipes"):
        link = ROOT / "src" / "archer" / "assets" / name
        assert link.is_symlink() and link.resolve() == ROOT / name  # no copies to drift apart
        assert asset(name) == ROOT / name
    assert tasks_module() == ROOT / "eval" / "archer_tasks.py"
    assert model_card_template() == ROOT / "model_cards" / "archer_model_card.md"


def test_yaml_by_path_or_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_yaml("tiny/smoke", "recipes") == ROOT / "recipes" / "tiny" / "smoke.yaml"
    assert "tiny/archer" in packaged_names(asset("recipes"))
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "smoke").write_text("model: {}\n")  # an existing file wins over a packaged name
    assert resolve_yaml("tiny/smoke", "recipes") == Path("tiny/smoke")
    # a path (.yaml) is never swapped for a packaged file; the caller reports it missing
    assert resolve_yaml("recipes/tiny/smoke.yaml", "recipes") == Path("recipes/tiny/smoke.yaml")
    assert resolve_yaml("no/such", "recipes") == Path("no/such")


def test_train_takes_a_packaged_recipe_by_name(tmp_path, monkeypatch, capsys):
    from archer.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "tiny/smoke", "--dry-run"]) == 0
    assert "batch arithmetic" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
