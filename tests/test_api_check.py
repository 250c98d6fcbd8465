"""The API check (`make api-check`): a wrong keyword / attribute / name fails it with file:line; the tree passes.

Offline: the planted-keyword logic runs against a small synthetic vLLM wheel built here; the real vLLM 0.30.0 wheel
is used only where it is cached ($ARCHER_WHEEL_CACHE or ~/.cache/archer/wheels; CI's `make api-check` step
downloads it before `make test`).
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
import zipfile
from pathlib import Path

import pytest
from paths import ROOT

from tools.api_check import __main__ as api_check
from tools.api_check.pyapi import ClassSym, FuncSym, PackageIndex
from tools.api_check.usage import check_source

FAKE_VLLM = {
    "vllm/__init__.py": """
        MODULE_ATTRS = {
            "LLM": ".entrypoints.llm:LLM",
            "SamplingParams": ".sampling_params:SamplingParams",
            "TokensPrompt": ".inputs:TokensPrompt",
        }

        def __getattr__(name):
            raise AttributeError(name) if name not in MODULE_ATTRS else NotImplementedError
    """,
    "vllm/entrypoints/__init__.py": "",
    "vllm/entrypoints/llm.py": """
        from vllm.engine.arg_utils import EngineArgs
        from vllm.inputs import PromptType
        from vllm.outputs import RequestOutput

        class LLM:
            def __init__(self, model: str, *, tensor_parallel_size: int = 1, **kwargs):
                self.llm_engine = EngineArgs(model=model, **kwargs)

            def generate(
                self, prompts: PromptType | list[PromptType], sampling_params=None, *, use_tqdm: bool = True
            ) -> list[RequestOutput]:
                return []

            def sleep(self, level: int = 1):
                pass
    """,
    "vllm/engine/__init__.py": "",
    "vllm/engine/arg_utils.py": """
        from dataclasses import dataclass

        @dataclass
        class EngineArgs:
            model: str
            max_model_len: int | None = None
            enable_sleep_mode: bool = False
    """,
    "vllm/sampling_params.py": """
        import msgspec

        class SamplingParams(msgspec.Struct):
            n: int = 1
            temperature: float = 1.0
            max_tokens: int | None = 16
            seed: int | None = None
    """,
    "vllm/outputs.py": """
        from dataclasses import dataclass

        @dataclass
        class CompletionOutput:
            index: int
            text: str
            token_ids: list[int]

        class RequestOutput:
            def __init__(self, request_id: str, outputs: list[CompletionOutput]):
                self.request_id = request_id
                self.outputs = outputs
    """,
    "vllm/inputs/__init__.py": "from .data import PromptType, TokensPrompt\n",
    "vllm/inputs/data.py": """
        from typing import TypedDict, Union

        class TokensPrompt(TypedDict):
            prompt_token_ids: list[int]

        PromptType = Union[str, TokensPrompt]
    """,
}

# A client module written like the project's vLLM backend; each plant below breaks exactly one name in it.
CLIENT = """\
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def sample(path, ids, k):
    llm = LLM(model=path, tensor_parallel_size=1, max_model_len=64, enable_sleep_mode=True)
    params = SamplingParams(n=k, temperature=0.8, max_tokens=8, seed=0)
    prompts = [TokensPrompt(prompt_token_ids=x) for x in ids]
    outs = llm.generate(prompts, params, use_tqdm=False)
    raw = llm.generate([{"prompt_token_ids": x} for x in ids], sampling_params=params)
    return [[c.text for c in o.outputs] for o in outs + raw]


class Engine:
    def __init__(self, path):
        self.llm = LLM(model=path)

    def pause(self):
        self.llm.sleep(level=1)
"""

PLANTS = {  # what is replaced -> (by what, line, words the problem must show)
    "max_model_len=64": ("max_model_length=64", 6, ["LLM(max_model_length=", "did you mean 'max_model_len'"]),
    "seed=0": ("sed=0", 7, ["SamplingParams(sed=", "has no keyword 'sed'"]),
    "TokensPrompt(prompt_token_ids=x)": ("TokensPrompt(prompt_ids=x)", 8, ["TokensPrompt(prompt_ids="]),
    "use_tqdm=False": ("progress=False", 9, ["generate(progress=", "no keyword 'progress'"]),
    '{"prompt_token_ids": x}': ('{"prompt_ids": x}', 10, ["prompt key 'prompt_ids'"]),
    "c.text": ("c.txt", 11, ["CompletionOutput has no attribute 'txt'", "did you mean 'text'"]),
    "import TokensPrompt": ("import TokenPrompt", 2, ["vllm.inputs has no name 'TokenPrompt'"]),
    "import LLM,": ("import LLMs,", 1, ["vllm has no name 'LLMs'"]),
    "self.llm.sleep(level=1)": ("self.llm.sleep(depth=1)", 19, ["LLM.sleep(depth="]),
}


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory) -> Path:
    wheel = tmp_path_factory.mktemp("wheels") / "vllm-0.30.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in FAKE_VLLM.items():
            archive.writestr(name, textwrap.dedent(text))
    return wheel


@pytest.fixture(scope="module")
def fake_index(fake_wheel) -> PackageIndex:
    return PackageIndex.from_wheel(fake_wheel, "vllm")


def test_clean_client_passes(fake_index):
    problems, uses = check_source(fake_index, CLIENT, "client.py", "fake")
    assert problems == []
    called = {u.target.rsplit(".", 1)[-1] for u in uses if u.kind == "call"}
    assert {"LLM", "SamplingParams", "TokensPrompt", "generate", "sleep"} <= called


@pytest.mark.parametrize("old", list(PLANTS))
def test_planted_mistake_names_file_line_and_name(fake_index, old):
    new, line, words = PLANTS[old]
    assert old in CLIENT
    problems, _ = check_source(fake_index, CLIENT.replace(old, new, 1), "client.py", "fake")
    assert len(problems) == 1, problems
    text = str(problems[0])
    assert text.startswith(f"client.py:{line}: ")
    for word in words:
        assert word in text


def test_dict_spread_and_version_gates(fake_index):
    source = textwrap.dedent(
        """
        from vllm import SamplingParams
        NEW = is_vllm_available(min_version="0.28.0")
        if NEW:
            from vllm.sampling_params import SamplingParams as P
        else:
            from vllm.old_module import Gone  # code for releases before 0.28: not checked against 0.30

        def make(k):
            kwargs = {"n": k, "temperature": 1.0}
            kwargs["max_tokns"] = 8
            return SamplingParams(**kwargs)
        """
    )
    problems, _ = check_source(fake_index, source, "gated.py", "fake")
    assert [(p.line, "max_tokns" in p.message and "**kwargs" in p.message) for p in problems] == [(11, True)]


def test_cli_fails_on_planted_keyword_and_passes_clean(fake_wheel, tmp_path, capsys):
    module = tmp_path / "src" / "archer" / "backend.py"
    module.parent.mkdir(parents=True)
    module.write_text(CLIENT)
    args = ["--wheel", str(fake_wheel), "--root", str(tmp_path), "--checks", "vllm"]
    assert api_check.main(args) == 0
    module.write_text(CLIENT.replace("max_model_len=64", "max_model_length=64"))
    assert api_check.main(args) == 1
    out = capsys.readouterr().out
    assert "src/archer/backend.py:6: LLM(max_model_length=...)" in out
    assert "api-check: FAILED, 1 problem(s)" in out


def test_wheel_comes_from_cache_else_pip_download_no_deps(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, check):
        calls.append(command)
        (tmp_path / "dl" / "vllm-0.30.0-cp38-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"zip")

    monkeypatch.setattr(api_check.subprocess, "run", fake_run)
    got = api_check.obtain_wheel("vllm", "0.30.0", tmp_path / "dl")
    assert got.name.startswith("vllm-0.30.0-") and len(calls) == 1
    command = calls[0]
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"] and "vllm==0.30.0" in command
    assert "install" not in command
    assert api_check.obtain_wheel("vllm", "0.30.0", tmp_path / "dl") == got and len(calls) == 1  # cached
    assert api_check.pinned_version("vllm", ROOT / "constraints-gpu.txt") == "0.30.0"


@pytest.mark.slow  # importing lighteval's task module takes 10-30 s on a busy 2-core machine
def test_lighteval_uses_pass_and_ast_reading_matches_inspect(capsys):
    """Our lighteval calls pass; and for each lighteval callable we call, the keywords the AST reader finds are
    the ones ``inspect`` finds on the imported object (holding the reader to the real package)."""
    assert api_check.main(["--root", str(ROOT), "--checks", "lighteval"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    version = api_check.installed_version("lighteval")
    index = PackageIndex.from_folder(api_check.installed_site("lighteval"), "lighteval", version)
    section = api_check.check_ours(index, ROOT, ("src", "eval"), "lighteval", "t")
    targets = sorted({u.target for u in section.uses if u.kind == "call"})
    checked = 0
    for target in targets:
        sym = index.resolve_dotted(target)
        module, _, name = target.rpartition(".")
        obj = getattr(importlib.import_module(module), name)
        if isinstance(sym, ClassSym):
            params = index.init_params(sym)
        else:
            assert isinstance(sym, FuncSym), target
            params = index.func_params(sym)
        signature = inspect.signature(obj).parameters.values()
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature):
            continue  # e.g. a stand-in class lighteval defines when vLLM is missing: inspect cannot tell
        real = {p.name for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        assert params.names == real, target
        checked += 1
    assert checked >= 3


def _cached_wheel() -> Path | None:
    version = api_check.pinned_version("vllm", ROOT / "constraints-gpu.txt")
    found = sorted(api_check.default_cache_dir().glob(f"vllm-{version}-*.whl"))
    return found[0] if found else None


@pytest.mark.slow  # reads the 2,700 modules of the real wheel
@pytest.mark.skipif(_cached_wheel() is None, reason="vLLM wheel not cached (make api-check downloads it)")
def test_real_wheel_tree_passes_and_planted_keyword_fails(tmp_path, capsys):
    wheel = _cached_wheel()
    assert api_check.main(["--wheel", str(wheel), "--checks", "vllm,trl"]) == 0
    out = capsys.readouterr().out
    assert "vllm_enable_sleep_mode -> enable_sleep_mode -> llm.LLM(enable_sleep_mode=)" in out
    assert "api-check: ok" in out
    module = tmp_path / "src" / "planted.py"
    module.parent.mkdir(parents=True)
    module.write_text(CLIENT.replace("max_model_len=64", "max_model_length=64"))
    assert api_check.main(["--wheel", str(wheel), "--root", str(tmp_path), "--checks", "vllm"]) == 1
    out = capsys.readouterr().out
    assert "src/planted.py:6: LLM(max_model_length=...): vllm.entrypoints.llm.LLM has no keyword" in out


def test_vllm_environment_variable_names_are_checked(fake_wheel, tmp_path, capsys):
    wheel = tmp_path / "vllm-0.30.0-py3-none-any.whl"
    with zipfile.ZipFile(fake_wheel) as src, zipfile.ZipFile(wheel, "w") as dst:
        for item in src.namelist():
            dst.writestr(item, src.read(item))
        dst.writestr("vllm/envs.py", 'environment_variables = {"VLLM_DP_RANK": lambda: 0}\n')
    module = tmp_path / "src" / "dp.py"
    module.parent.mkdir(parents=True)
    module.write_text('import os\n\nos.environ["VLLM_DP_RANK"] = "0"\nos.environ["VLLM_DP_RANKK"] = "0"\n')
    assert api_check.main(["--wheel", str(wheel), "--root", str(tmp_path), "--checks", "vllm"]) == 1
    assert "src/dp.py:4: VLLM_DP_RANKK: vLLM reads no such variable" in capsys.readouterr().out
