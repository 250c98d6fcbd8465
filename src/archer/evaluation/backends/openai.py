"""OpenAI-compatible server backend: ``/v1/completions`` of ``vllm serve``, SGLang, TGI or any server of that API.

One request per problem (``n = k`` samples, the problem's own ``seed``, ``temperature``, ``top_p``,
``max_tokens``), at most ``max_concurrency`` in flight. The prompt goes as token ids (the runner's exact
encoding; the default) or as text, which the server tokenises itself. Only OpenAI's own request fields are sent,
with one exception: a text prompt that already holds its special tokens (a chat template that writes the BOS, as
DeepSeek-R1-Distill's does) goes with ``add_special_tokens: false`` (vLLM's field; it adds a BOS to text prompts by
default, which would make two), so that the server sees the runner's token ids. Other sampling settings (top-k,
min-p, repetition penalty) are the server's defaults, which for vLLM come from the model's
``generation_config.json`` unless it is started with ``--generation-config vllm``.

The ``openai`` client retries 5xx answers, 408/409/429, timeouts and refused connections with exponential backoff
(0.5 s doubling, at most 8 s, or the server's Retry-After); what still fails after ``max_retries`` retries, and any
other 4xx (an unknown model name, a prompt longer than the context), stops the run with one ``UserError`` line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from archer.errors import UserError
from archer.evaluation.backends.base import PROMPT_FORMATS, BackendOptions, Sampling, problem_seeds

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def server_message(err: Exception) -> str:
    """The server's own explanation: vLLM / OpenAI put it in ``{"error": {"message": ...}}``."""
    body = getattr(err, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return _one_line(body["message"])
    if isinstance(body, str) and body:
        return _one_line(body)
    return _one_line(getattr(err, "message", None) or str(err))


def _same_model(served: str, local: str) -> bool:
    """The server's model path or id against ``--model`` (paths compared resolved when both exist here)."""
    if Path(served).exists() and Path(local).exists():
        return Path(served).resolve() == Path(local).resolve()
    return served.rstrip("/") == local.rstrip("/")


class OpenAIBackend:
    """Completions from a running server; ``model`` is where the tokenizer (and chat template) comes from."""

    name = "openai"

    def __init__(self, model: str, options: BackendOptions):
        import openai
        from transformers import AutoTokenizer

        self.options = options
        url = options.base_url or ""
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
        if options.prompt_format not in PROMPT_FORMATS:
            raise UserError(f"--prompt-format {options.prompt_format!r}: valid: {', '.join(PROMPT_FORMATS)}")
        api_key = "EMPTY"  # vLLM and SGLang started without --api-key accept any key
        if options.api_key_env is not None:
            api_key = os.environ.get(options.api_key_env, "")
            if not api_key:
                raise UserError(f"--api-key-env {options.api_key_env}: that environment variable is not set")
        self.client = openai.OpenAI(
            api_key=api_key, base_url=url, max_retries=options.max_retries, timeout=options.request_timeout_s
        )
        served = self._call(
            lambda: self.client.models.list().data, not_found="(no /models there: does the URL end in /v1?)"
        )
        names = [entry.id for entry in served]
        if options.served_model is not None and options.served_model not in names:
            raise UserError(
                f"--model-name {options.served_model}: not served at {url}; it serves: {', '.join(names) or 'nothing'}"
            )
        if options.served_model is None and len(names) != 1:
            raise UserError(f"{url} serves {len(names)} models ({', '.join(names)}); pick one with --model-name")
        self.served_model = options.served_model or names[0]
        entry = served[names.index(self.served_model)]
        self.server = getattr(entry, "owned_by", None) or "unknown"
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        root = getattr(entry, "root", None) or self.served_model
        if not _same_model(root, model):
            logger.warning(
                "the server serves %s (%s); prompts are encoded with the tokenizer of %s: they must be the same model",
                self.served_model,
                root,
                model,
            )
        logger.info("server %s (%s) serves %s", url, self.server, self.served_model)

    def _call(self, request: Callable[[], T], not_found: str = "(check --model-name)") -> T:
        """One API call (with the client's retries); failures become one line naming the URL."""
        import openai

        url = self.options.base_url
        try:
            return request()
        except openai.APITimeoutError:
            raise UserError(
                f"--base-url {url}: no answer within {self.options.request_timeout_s:g} s after "
                f"{self.options.max_retries} retries; raise --request-timeout or lower --max-concurrency"
            ) from None
        except openai.APIConnectionError as err:
            raise UserError(
                f"--base-url {url}: cannot connect after {self.options.max_retries} retries ({server_message(err)}); "
                "is the server running (vllm serve MODEL, make serve-vllm)?"
            ) from None
        except openai.APIStatusError as err:
            code = err.status_code
            retried = f" after {self.options.max_retries} retries" if code >= 500 or code in (408, 409, 429) else ""
            hint = f" {not_found}" if code == 404 else ""
            raise UserError(
                f"--base-url {url}: the server answered {code}{retried}{hint}: {server_message(err)}"
            ) from None

    def requests(
        self, prompts: Sequence[list[int]], sampling: Sampling, texts: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """The ``completions.create`` arguments of each problem, in order: what goes to the server."""
        seeds = problem_seeds(self.options.seed, len(prompts), sampling.k)
        out = []
        for i, (ids, seed) in enumerate(zip(prompts, seeds, strict=True)):
            args: dict[str, Any] = {
                "model": self.served_model,
                "prompt": list(ids),
                "n": sampling.k,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens,
                "seed": seed,
            }
            if self.options.prompt_format == "text":
                if texts is None:
                    raise ValueError("prompt_format 'text' needs the prompt texts")
                args["prompt"] = texts[i]
                if self._has_own_special_tokens(texts[i], ids):
                    args["extra_body"] = {"add_special_tokens": False}
            out.append(args)
        return out

    def _has_own_special_tokens(self, text: str, ids: Sequence[int]) -> bool:
        """The text alone encodes to the prompt's ids, and the tokenizer's special tokens would add to them."""
        bare = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if bare != list(ids):
            return False
        return self.tokenizer(text)["input_ids"] != bare

    def _complete(self, args: dict[str, Any]) -> list[str]:
        completion = self._call(lambda: self.client.completions.create(**args))
        k = args["n"]
        choices = sorted(completion.choices, key=lambda choice: choice.index)
        if len(choices) != k:
            raise UserError(
                f"--base-url {self.options.base_url}: asked for n={k} completions, got {len(choices)}; "
                "the server does not support n > 1"
            )
        return [choice.text for choice in choices]

    def protocol(self) -> dict[str, object]:
        return {
            "served_model": self.served_model,
            "server": self.server,
            "prompt_format": self.options.prompt_format,
            "max_concurrency": self.options.max_concurrency,
        }

    def close(self) -> None:
        self.client.close()

    def generate(
        self, prompts: Sequence[list[int]], sampling: Sampling, desc: str, texts: Sequence[str] | None = None
    ) -> list[list[str]]:
        requests = self.requests(prompts, sampling, texts)
        out: list[list[str]] = [[] for _ in prompts]
        with (
            ThreadPoolExecutor(max_workers=self.options.max_concurrency) as pool,
            tqdm(total=len(prompts), desc=desc, unit="problem") as bar,
        ):
            futures: dict[Future, int] = {}
            for i, args in enumerate(requests):
                future = pool.submit(self._complete, args)
                future.add_done_callback(lambda _: bar.update(1))
                futures[future] = i
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [error for f in done if (error := f.exception()) is not None]
            if failed:
                for future in pending:
                    future.cancel()
                raise failed[0]
            for future, i in futures.items():
                out[i] = future.result()
        return out
