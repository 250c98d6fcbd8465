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


def test_documented_vllm_serve_flags_are_checked(tmp_path):
    """`vllm serve` command lines of our documentation (GPU routes nothing runs on CPU): an unknown flag fails."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "README.md").write_text(
        "Start it:\n\n    vllm serve outputs/run --max-model-len 4096 --max-model-length 4096 &\n"
        "`vllm serve` in prose is not a command line --nonsense\n"
    )
    wheel = tmp_path / "vllm-0.30.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in FAKE_VLLM.items():
            archive.writestr(name, textwrap.dedent(text))
        archive.writestr("vllm/engine/cli.py", 'def add(parser):\n    parser.add_argument("--max-model-len")\n')
    index = PackageIndex.from_wheel(wheel, "vllm")
    problems, notes = api_check.check_doc_serve_flags(index, tmp_path)
    assert [str(p) for p in problems] == [
        "eval/README.md:3: vllm serve --max-model-length: no such flag in vLLM 0.30.0"
    ]
    assert notes == ["  our documentation -> vllm serve: 2 flags checked"]


def _gpu_wheel(torch_pin: str, files: dict[str, bytes]) -> bytes:
    """A wheel's bytes: ``files``, a METADATA pinning ``torch_pin`` and a RECORD with their sha256."""
    import base64
    import hashlib
    import io

    metadata = (
        "Metadata-Version: 2.1\nName: vllm\nVersion: 0.30.0\n"
        f"Requires-Dist: torch=={torch_pin}\nRequires-Dist: transformers>=5.10.4\n"
        'Requires-Dist: pywin32; sys_platform == "win32"\nRequires-Dist: numba==0.61; extra == "bench"\n'
    )
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("vllm-0.30.0.dist-info/METADATA", metadata)
        archive.writestr("vllm-0.30.0.dist-info/RECORD", "\n".join(record) + "\n")
    return buffer.getvalue()


def test_gpu_wheel_is_read_by_range_requests_and_held_to_the_pins_and_the_cpu_build():
    import httpx

    from tools.api_check import gpu_wheel

    files = {
        "vllm/__init__.py": b"x = 1\n",
        "vllm/_version.py": b"v = 'gpu'\n",
        "vllm/third_party/flashmla/ops.py": b"cuda\n",
        "vllm/sampling_params.py": b"gpu\n",
    }
    served = _gpu_wheel("2.12.0", files)
    asked = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200, headers={"content-length": str(len(served))})
        start, end = map(int, request.headers["range"].removeprefix("bytes=").split("-"))
        asked.append((start, end))
        return httpx.Response(206, content=served[start : end + 1])

    with gpu_wheel.open_wheel("https://files.example/vllm.whl", transport=httpx.MockTransport(handler)) as archive:
        metadata = gpu_wheel.member(archive, "METADATA")
        record = gpu_wheel.member(archive, "RECORD")
    assert asked  # read in ranges, never in one plain GET
    requires = gpu_wheel.requirements(metadata)
    assert requires == ["torch==2.12.0", "transformers>=5.10.4"]  # markers evaluated for Linux, no extras
    problems, notes = gpu_wheel.check_requirements(requires, gpu_wheel.pins(ROOT / "constraints-gpu.txt"))
    assert problems == ["torch==2.12.0 vs constraints-gpu.txt torch==2.13.0"]
    assert notes == ["transformers>=5.10.4 vs constraints-gpu.txt transformers==5.24.0"]
    gpu = gpu_wheel.record_hashes(record)
    cpu = {**gpu, "vllm/_version.py": "sha256=cpu", "vllm/sampling_params.py": "sha256=cpu"}
    del cpu["vllm/third_party/flashmla/ops.py"]  # a vendored CUDA kernel package: GPU wheel only, expected
    problems, notes = gpu_wheel.compare_sources(gpu, cpu)
    assert problems == ["vllm/sampling_params.py: differs between the GPU wheel and the CPU build"]
    assert "equal except vllm/_version.py, vllm/sampling_params.py; 1 GPU-only files" in notes[0]


@pytest.mark.slow  # hashes the installed vLLM CPU build's 2,500 Python files
def test_gpu_wheel_check_passes_on_the_pinned_set(tmp_path, capsys):
    """The check as CI runs it, offline: a local wheel holding the installed CPU build's own Python files."""
    from importlib.metadata import distribution

    dist = distribution(api_check.installed_vllm()[0])
    files = {
        f.as_posix(): Path(f.locate()).read_bytes()
        for f in dist.files
        if f.as_posix().startswith("vllm/") and f.as_posix().endswith(".py")
    }
    wheel = tmp_path / "vllm-0.30.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(_gpu_wheel("2.13.0", files))
    assert api_check.main(["--checks", "gpu-wheel", "--wheel", str(wheel)]) == 0
    out = capsys.readouterr().out
    assert "requires torch==2.13.0 vs constraints-gpu.txt torch==2.13.0" in out and "api-check: ok" in out
    assert api_check.pinned_version("vllm", ROOT / "constraints-gpu.txt") == "0.30.0"


@pytest.mark.slow  # reads the 2,700 modules of the installed vLLM CPU build
def test_trl_calls_into_the_installed_vllm_pass_and_a_planted_flag_fails(tmp_path, capsys):
    assert api_check.main(["--checks", "trl"]) == 0
    out = capsys.readouterr().out
    assert "vllm_enable_sleep_mode -> enable_sleep_mode -> llm.LLM(enable_sleep_mode=)" in out
    assert "our documentation -> vllm serve: 8 flags checked" in out and "api-check: ok" in out
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text().replace("--max-model-len 34816", "--max-model-length 34816"))
    (tmp_path / "constraints-gpu.txt").write_text((ROOT / "constraints-gpu.txt").read_text())
    (tmp_path / "recipes").mkdir()
    assert api_check.main(["--checks", "trl", "--root", str(tmp_path)]) == 1
    assert "vllm serve --max-model-length: no such flag in vLLM 0.30.0" in capsys.readouterr().out
