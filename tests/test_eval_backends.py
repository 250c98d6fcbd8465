"""Backend choice, the vLLM configuration (lighteval's VLLMModelConfig) and prompt formatting."""

from types import SimpleNamespace

import pytest

from archer.errors import UserError
from archer.evaluation import backends
from archer.evaluation.backends import BackendOptions, Sampling, select_backend, vllm_model_config
from archer.evaluation.runner import encode_prompts


def test_auto_picks_transformers_without_vllm_and_gpu(monkeypatch):
    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    assert select_backend("auto") == "transformers"
    assert select_backend("transformers") == "transformers"
    with pytest.raises(UserError, match="vLLM is not installed or no GPU"):
        select_backend("vllm")
    monkeypatch.setattr(backends, "vllm_available", lambda: True)
    assert select_backend("auto") == "vllm"
    with pytest.raises(UserError, match="valid: auto, transformers, vllm"):
        select_backend("tgi")


def test_vllm_config_carries_parallelism_and_protocol(tmp_path):
    options = BackendOptions(tensor_parallel_size=2, data_parallel_size=4, max_model_length=34816, seed=7)
    config = vllm_model_config("org/model", options, Sampling(64, 0.8, 1.0, 32768), str(tmp_path))
    assert (config.model_name, config.tensor_parallel_size, config.data_parallel_size) == ("org/model", 2, 4)
    assert (config.max_model_length, config.seed, config.dtype, config.cache_dir) == (
        34816,
        7,
        "bfloat16",
        str(tmp_path),
    )
    vllm_sampling = config.generation_parameters.to_vllm_dict()
    assert vllm_sampling["temperature"] == 0.8 and vllm_sampling["top_p"] == 1.0
    assert vllm_sampling["max_tokens"] == 32768 and "top_k" not in vllm_sampling  # no top-k, as in the paper


def test_vllm_backend_feeds_token_ids_and_skips_the_sample_cache(monkeypatch, tmp_path):
    """lighteval's VLLMModel replaced by a recorder (no vLLM here): what our backend hands it."""
    import lighteval.models.vllm.vllm_model as vllm_model
    from transformers import AutoTokenizer

    calls = []

    class Recorder:
        def __init__(self, config):
            calls.append(("init", config))
            self._cache = object()

        def _generate(self, inputs, max_new_tokens, stop_tokens, num_samples):
            calls.append(("generate", inputs, max_new_tokens, stop_tokens, num_samples, self.config, self._cache))
            return [
                SimpleNamespace(outputs=[SimpleNamespace(text=f"{i}-{j}") for j in range(num_samples)]) for i in inputs
            ]

    monkeypatch.setattr(vllm_model, "VLLMModel", Recorder)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", staticmethod(lambda name: "tokenizer"))
    backend = backends.VLLMBackend("org/model", BackendOptions(tensor_parallel_size=2), str(tmp_path))
    out = backend.generate([[1, 2], [3]], Sampling(2, 0.8, 1.0, 100), "aime24")
    assert out == [["[1, 2]-0", "[1, 2]-1"], ["[3]-0", "[3]-1"]]
    out = backend.generate([[5]], Sampling(3, 0.6, 0.9, 50), "math_500")
    assert [c[0] for c in calls] == ["init", "generate", "generate"]  # one engine for the whole suite
    _, inputs, max_new, stop, k, config, cache = calls[2]
    assert (inputs, max_new, stop, k, cache) == ([[5]], 50, [], 3, None)
    assert config.generation_parameters.temperature == 0.6 and config.tensor_parallel_size == 2


def test_prompt_styles():
    from archer import tiny

    tokenizer = tiny.build_tokenizer()
    texts, ids = encode_prompts(tokenizer, ["Compute 1+2."], "raw")
    assert texts == ["Compute 1+2."] and ids == [tokenizer("Compute 1+2.")["input_ids"]]
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="no chat template; use prompt_style: raw"):
        encode_prompts(tokenizer, ["Compute 1+2."], "chat")
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    texts, ids = encode_prompts(tokenizer, ["Compute 1+2."], "chat")
    assert texts == ["<user>Compute 1+2.<assistant>"] and tokenizer.decode(ids[0]) == texts[0]
