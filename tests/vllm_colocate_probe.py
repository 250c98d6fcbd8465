"""Run in a process of its own by tests/test_vllm_rollouts.py: an ArcherTrainer with a colocated vLLM engine (vLLM's
CPU build) on a fresh tiny model, and the gap between the engine's and the policy's log-probs of a fixed completion
at each point that matters. Prints one JSON object.

A process of its own because an in-process engine changes the process for good: vLLM's CPU worker turns
``torch.set_num_threads`` into a no-op and re-seeds the global RNGs, the engine joins a torch.distributed group, TRL
sets RANK / WORLD_SIZE / MASTER_PORT.

    python tests/vllm_colocate_probe.py WORKDIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def parity_reward(completions, **kwargs):
    return [float(len(c) % 2 == 0) for c in completions]


def fixed_completion(tokenizer) -> tuple[list[int], int]:
    """A prompt and a worked answer (with EOS) as token ids, and where the answer starts."""
    prompt = tokenizer("Compute 3+4.", add_special_tokens=False)["input_ids"]
    answer = tokenizer("<think>3+4=7.</think> \\boxed{7}", add_special_tokens=False)["input_ids"]
    return prompt + answer + [tokenizer.eos_token_id], len(prompt)


def policy_logprobs(model, ids: list[int], start: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0].float()
    logps = torch.log_softmax(logits, -1)
    return torch.tensor([logps[j - 1, ids[j]].item() for j in range(start, len(ids))])


def engine_logprobs(llm, ids: list[int], start: int) -> torch.Tensor:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    return torch.tensor([out.prompt_logprobs[j][ids[j]].logprob for j in range(start, len(ids))])


def main(workdir: Path) -> dict:
    from transformers import AutoTokenizer

    from archer.data.arithmetic import ArithmeticTask
    from archer.tiny import TinyModelConfig, build_model, build_tokenizer
    from archer.training.config import ArcherConfig
    from archer.training.trainer import ArcherTrainer
    from archer.training.vllm_rollouts import ArcherVLLMGeneration, repack_tied_lm_heads

    folder = workdir / "tiny32"
    tokenizer = build_tokenizer()
    build_model(tokenizer, TinyModelConfig(hidden_size=64, num_heads=2, num_kv_heads=1), seed=0).save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    args = ArcherConfig(
        output_dir=str(workdir / "run"),
        use_vllm=True,
        vllm_mode="colocate",
        vllm_dtype="float32",  # the settings of recipes/tiny/archer-vllm.yaml
        vllm_enforce_eager=True,
        vllm_kv_cache_gib=0.0625,
        vllm_gpu_memory_utilization=0.05,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        num_generations=4,
        per_device_train_batch_size=8,
        steps_per_generation=2,
        num_iterations=2,
        max_completion_length=12,
        max_steps=2,  # two rollouts: TRL syncs the engine before each
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        activation_checkpointing=False,
    )
    trainer = ArcherTrainer(
        model=str(folder),
        reward_funcs=[parity_reward],
        args=args,
        train_dataset=ArithmeticTask().dataset(64, seed=1),
        processing_class=AutoTokenizer.from_pretrained(str(folder)),
    )
    generation = trainer.vllm_generation
    llm = generation.llm
    model = trainer.accelerator.unwrap_model(trainer.model)
    ids, start = fixed_completion(trainer.processing_class)

    def gap() -> float:
        model.eval()
        return (engine_logprobs(llm, ids, start) - policy_logprobs(model, ids, start)).abs().max().item()

    found = {
        "generation_class": type(generation).__name__,
        "engine_dtype": str(llm.llm_engine.model_config.dtype),
        "gap_at_start": gap(),
    }
    trainer.train()
    found["optimizer_steps"] = trainer.optimizer_steps_taken()
    found["logged_sampling_gap_max"] = [
        h["sampling/sampling_logp_difference/max"]
        for h in trainer.state.log_history
        if "sampling/sampling_logp_difference/max" in h
    ]
    found["gap_before_sync"] = gap()  # the last rollout's optimizer steps are not in the engine yet
    generation.sync_weights()
    found["gap_after_sync"] = gap()
    generation.sync_weights()
    found["gap_after_second_sync"] = gap()

    # the tied LM head: move the shared embedding only, reload without the re-pack, then re-pack
    assert model.config.tie_word_embeddings
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.5 * torch.randn_like(model.model.embed_tokens.weight))
    weights = list(generation._copied_params())
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
    found["gap_reloaded_without_repack"] = gap()
    found["heads_repacked"] = llm.apply_model(repack_tied_lm_heads)
    found["gap_after_repack"] = gap()
    assert isinstance(generation, ArcherVLLMGeneration)
    return found


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(Path(sys.argv[1]))), flush=True)
