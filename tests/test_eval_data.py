"""Where benchmark rows come from: local files and dataset folders, the Hub (offline here: a clear error)."""

import json

import datasets
import pytest
from paths import ROOT

from archer.errors import UserError
from archer.evaluation.data import load_rows

DATA = ROOT / "tests" / "data" / "eval"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def test_local_files_and_dataset_folders(tmp_path, tasks):
    math500 = rows("math500")
    (tmp_path / "m.json").write_text(json.dumps(math500))
    datasets.Dataset.from_list(math500).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(math500)}).save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "files").mkdir()
    datasets.Dataset.from_list(rows("lcb")).to_parquet(str(tmp_path / "files" / "test-00000.parquet"))
    config = tasks["archer:math_500"]
    for source in (DATA / "math500.jsonl", tmp_path / "m.json", tmp_path / "saved", tmp_path / "saved_dict"):
        assert [r["unique_id"] for r in load_rows(config, str(source))] == [r["unique_id"] for r in math500]
    # a folder of data files has no 'release_v6' config: read as is, then filtered to v6's window
    assert [r["question_id"] for r in load_rows(tasks["archer:lcb_v6"], str(tmp_path / "files"))] == ["3600"]


def test_bad_sources_are_user_errors(tmp_path, tasks):
    with pytest.raises(UserError, match="does not exist"):
        load_rows(tasks["archer:aime24"], str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(UserError, match="unsupported data file"):
        load_rows(tasks["archer:aime24"], str(tmp_path / "x.csv"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="no rows"):
        load_rows(tasks["archer:aime24"], str(tmp_path / "empty.jsonl"))


def test_hub_offline_names_the_local_alternative(tasks):
    with pytest.raises(UserError) as err:
        load_rows(tasks["archer:aime24"])  # HF_DATASETS_OFFLINE=1 and an empty cache (conftest)
    assert "HuggingFaceH4/aime_2024" in str(err.value) and "--data aime24=PATH" in str(err.value)
