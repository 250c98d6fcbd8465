"""The TRL range archer supports: one line at the start of `archer train`, the same range in setup.cfg."""

from __future__ import annotations

import configparser
from importlib import metadata

import pytest
from paths import ROOT

from archer import versions
from archer.cli import main
from archer.errors import UserError


def test_setup_cfg_requires_the_supported_trl_range():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    assert f"trl{versions.TRL_SUPPORTED}" in requires


def test_installed_trl_is_supported():
    versions.check_trl_version()  # the pinned set (constraints-*.txt) is inside the range


@pytest.mark.parametrize("installed", ["1.17.0", "1.15.2", "2.0.0", "not-a-version"])
def test_unsupported_trl_is_one_line(installed):
    with pytest.raises(UserError, match=f"TRL {installed} is installed; archer train supports trl>=1.16,<1.17"):
        versions.check_trl_version(installed)


@pytest.mark.parametrize("dry_run", [True, False])
def test_archer_train_stops_on_an_unsupported_trl_before_reading_the_recipe(monkeypatch, capsys, tmp_path, dry_run):
    real = metadata.version
    monkeypatch.setattr(versions.metadata, "version", lambda name: "1.17.0" if name == "trl" else real(name))
    argv = ["train", "tiny/smoke", f"trainer.output_dir={tmp_path / 'run'}"] + ["--dry-run"] * dry_run
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: TRL 1.17.0 is installed; archer train supports trl>=1.16,<1.17")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "run").exists()
