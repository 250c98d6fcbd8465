"""The vLLM backend on a stand-in ``vllm`` package (tests/fake_vllm), and that stand-in held to the pinned wheel.

No GPU here: what is tested is what archer hands vLLM (engine arguments, one SamplingParams per problem with its
seed, token-id prompts), how data-parallel engines split and reassemble the work, and failures. That every name
also exists in vLLM 0.30.0 is checked below against the wheel's source (and by the project's API check).
"""

import sys

import pytest
from paths import ROOT
from vllm_wheel import class_fields, find_wheel, init_params, method_params

from archer.errors import UserError
from archer.evaluation.backends.base import BackendOptions, Sampling, problem_seeds

FAKE = ROOT / "tests" / "fake_vllm"


def _forget_vllm() -> None:
    for name in [
        m for m in sys.modules if m == "vllm" or m.startswith(("vllm.", "archer.evaluation.backends.vllm_engine"))
    ]:
        del sys.modules[name]


@pytest.fixture
def fake_modules(monkeypatch):
    """The fake importable as ``vllm`` (spawned engine processes inherit sys.path), forgotten afterwards."""
    monkeypatch.syspath_prepend(str(FAKE))
    _forget_vllm()
    yield
    _forget_vllm()


@pytest.fixture
def fake_vllm(fake_modules, tmp_path):
    """The fake vLLM and a tiny tokenizer folder as the model."""
    from archer import tiny

    tiny.build_tokenizer().save_pretrained(tmp_path)
    return tmp_path


def parse(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(" "))


def test_in_process_engine_gets_token_ids_and_a_seed_per_problem(fake_vllm):
    import vllm

    from archer.evaluation.backends.vllm import VLLMBackend

    options = BackendOptions(tensor_parallel_size=2, max_model_length=34816, seed=7, gpu_memory_utilization=0.8)
    backend = VLLMBackend(str(fake_vllm), options)
    prompts = [[1, 2], [3], [4, 5, 6]]
    out = backend.generate(prompts, Sampling(2, 0.8, 1.0, 100), "aime24")
    backend.generate([[9]], Sampling(1, 0.0, 1.0, 5), "math_500")
    (engine,) = vllm.ENGINES  # one engine for the whole suite, built once
    assert engine.kwargs == {
        "model": str(fake_vllm),
        "tensor_parallel_size": 2,
        "dtype": "bfloat16",
        "seed": 7,
        "gpu_memory_utilization": 0.8,
        "max_model_len": 34816,
    }
    assert [[parse(t)["seed"] for t in texts] for texts in out] == [["7", "8"], ["9", "10"], ["11", "12"]]
    assert [[parse(t)["ids"] for t in texts] for texts in out] == [["1,2"] * 2, ["3"] * 2, ["4,5,6"] * 2]
    first = parse(out[0][0])
    assert (first["T"], first["top_p"], first["top_k"], first["max"], first["skip"]) == (
        "0.8",
        "1.0",
        "0",
        "100",
        "True",
    )
    assert backend.protocol() == {"dtype": "auto", "tensor_parallel_size": 2, "data_parallel_size": 1}
    backend.close()


def test_data_parallel_engines_split_the_work_and_give_the_same_samples(fake_vllm, monkeypatch):
    from archer.evaluation.backends.vllm import VLLMBackend

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")
    prompts = [[i] for i in range(5)]
    sampling = Sampling(3, 0.6, 0.95, 50)
    single = VLLMBackend(str(fake_vllm), BackendOptions(seed=11))
    expected = single.generate(prompts, sampling, "t")
    single.close()
    backend = VLLMBackend(str(fake_vllm), BackendOptions(seed=11, tensor_parallel_size=2, data_parallel_size=2))
    workers = list(backend._workers)
    try:
        out = backend.generate(prompts, sampling, "t")
        again = backend.generate(prompts[:2], sampling, "t")  # the engines serve the next task too
    finally:
        backend.close()
    assert [parse(texts[0])["gpus"] for texts in out] == ["2,3", "5,7", "2,3", "5,7", "2,3"]  # problem i: engine i%2

    def without_gpus(rows: list[list[str]]) -> list[list[str]]:
        return [[t.split(" ", 1)[1] for t in texts] for texts in rows]

    assert without_gpus(out) == without_gpus(expected)  # the same seeds and prompts whatever the layout
    assert without_gpus(again) == without_gpus(expected[:2])
    assert len(workers) == 2 and not any(w.process.is_alive() for w in workers)  # close() stopped them
    seeds = [int(parse(t)["seed"]) for texts in out for t in texts]
    assert seeds == [s + j for s in problem_seeds(11, 5, 3) for j in range(3)]


def test_data_parallel_needs_enough_gpus(fake_vllm, monkeypatch):
    from archer.evaluation.backends.vllm import VLLMBackend

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(UserError, match="--data-parallel-size 3 x --tensor-parallel-size 2 needs 6 GPUs; 4 visible"):
        VLLMBackend(str(fake_vllm), BackendOptions(tensor_parallel_size=2, data_parallel_size=3))


def test_an_engine_that_fails_to_start_is_reported_and_the_others_stopped(fake_vllm, monkeypatch):
    from archer.evaluation.backends import vllm as backends_vllm

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(backends_vllm, "_engine_args", lambda model, options: {**_args(), "model": "broken"})
    with pytest.raises(RuntimeError, match=r"the vLLM engine on GPUs 0 failed:(.|\n)*cannot load model 'broken'"):
        backends_vllm.VLLMBackend(str(fake_vllm), BackendOptions(data_parallel_size=2))


def _args() -> dict:
    return {
        "model": "m",
        "dtype": "bfloat16",
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "max_model_length": None,
        "seed": 0,
    }


@pytest.mark.skipif(find_wheel() is None, reason="no vLLM 0.30.0 wheel (see tests/vllm_wheel.py)")
def test_the_fake_uses_only_names_of_the_pinned_vllm(fake_modules):
    """Every name of tests/fake_vllm exists, with that meaning, in vLLM 0.30.0's source."""
    import inspect

    import vllm as fake
    import vllm.inputs as fake_inputs

    llm_kwargs = init_params("vllm/entrypoints/llm.py", "LLM") | class_fields("vllm/engine/arg_utils.py", "EngineArgs")
    assert set(inspect.signature(fake.LLM).parameters) <= llm_kwargs
    assert {"prompts", "sampling_params", "use_tqdm"} <= method_params("vllm/entrypoints/llm.py", "LLM", "generate")
    assert set(fake.SamplingParams.__dataclass_fields__) <= class_fields("vllm/sampling_params.py", "SamplingParams")
    assert set(fake_inputs.TokensPrompt.__annotations__) <= class_fields("vllm/inputs/llm.py", "TokensPrompt")
    assert set(fake.CompletionOutput.__dataclass_fields__) <= class_fields("vllm/outputs.py", "CompletionOutput")
    assert "outputs" in init_params("vllm/outputs.py", "RequestOutput")
