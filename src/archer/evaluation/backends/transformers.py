"""The reference backend: ``model.generate`` in this process (CPU or one GPU), what CI runs."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from archer.evaluation.backends.base import BackendOptions, Sampling


class TransformersBackend:
    """``model.generate`` on left-padded batches of prompts, k samples per prompt."""

    name = "transformers"

    def __init__(self, model: str, options: BackendOptions):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = "auto" if options.dtype == "auto" else getattr(torch, options.dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # PreTrainedModel.to is wrapped in functools.wraps, whose typeshed type leaves `self` unbound
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()  # type: ignore[arg-type]

    def protocol(self) -> dict[str, object]:
        return {"dtype": self.options.dtype, "batch_size": self.options.batch_size}

    def close(self) -> None:
        pass

    def generate(
        self, prompts: Sequence[list[int]], sampling: Sampling, desc: str, texts: Sequence[str] | None = None
    ) -> list[list[str]]:
        import torch

        torch.manual_seed(self.options.seed)
        greedy = sampling.temperature == 0
        kwargs = {"do_sample": False} if greedy else {"do_sample": True, "temperature": sampling.temperature}
        if not greedy:
            kwargs |= {"top_p": sampling.top_p, "top_k": 0}
        out: list[list[str]] = []
        with tqdm(total=len(prompts), desc=desc, unit="problem") as bar:
            for start in range(0, len(prompts), self.options.batch_size):
                batch = [{"input_ids": ids} for ids in prompts[start : start + self.options.batch_size]]
                inputs = self.tokenizer.pad(batch, return_tensors="pt").to(self.device)
                with torch.inference_mode():
                    ids = self.model.generate(
                        **inputs,
                        max_new_tokens=sampling.max_new_tokens,
                        num_return_sequences=sampling.k,
                        pad_token_id=self.tokenizer.pad_token_id,
                        **kwargs,
                    )
                texts_out = self.tokenizer.batch_decode(
                    ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                out.extend(texts_out[i : i + sampling.k] for i in range(0, len(texts_out), sampling.k))
                bar.update(len(batch))
        return out
