"""A stand-in OpenAI-compatible completions server on 127.0.0.1, serving a local model with transformers (tests only).

Only for what vLLM's real server (tests/vllm_server.py, which the other tests of ``--backend openai`` run against)
cannot be made to do on demand: answer 500 a given number of times or always, and answer later than the client's
timeout. It speaks the part of vLLM's OpenAI-compatible API that ``archer eval --backend openai`` uses:

- ``GET /v1/models``: one model card (``id``, ``object``, ``created``, ``owned_by``, ``root``, ``max_model_len``);
- ``POST /v1/completions``: ``prompt`` as text, a list of texts, token ids or a list of token-id lists; ``n``,
  ``temperature`` (0: greedy), ``top_p``, ``max_tokens``, ``seed``; answered as vLLM answers (``choices[]`` with
  ``index`` (prompt-major, ``prompt * n + j``), ``text``, ``logprobs: null``, ``finish_reason`` ``stop`` or
  ``length``, ``stop_reason``; ``usage``). Text prompts are tokenised with special tokens, as vLLM does by default;
  completions are decoded without special tokens, as vLLM does by default. A seeded request seeds torch before
  generating that request alone, so its samples do not depend on what else the server is doing.
- errors in vLLM's shape, ``{"error": {"message", "type", "param", "code"}}``: 404 ``NotFoundError`` for a model
  name it does not serve, 400 ``BadRequestError`` when prompt + ``max_tokens`` exceed ``max_model_len`` (vLLM's
  wording), 400 for a malformed body.

Failure modes for tests: ``fail_first=N`` answers the first N completion requests with 500, ``fail_always=True``
answers every one with 500 (``/v1/models`` keeps working, as on a server whose engine died), ``delay_s=S`` waits S
seconds before answering a completion request. ``requests`` holds
every completion request body, in order of arrival. Not covered: streaming, logprobs, echo, stop strings,
chat completions, authentication, top-k / min-p / penalties, batching of concurrent requests (one at a time).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class CompletionServer:
    """``with CompletionServer(model_dir) as server:``; ``server.base_url`` ends in ``/v1``."""

    def __init__(
        self,
        model_dir: str | Path,
        served_name: str = "tiny",
        max_model_len: int = 256,
        fail_first: int = 0,
        fail_always: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = str(model_dir)
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.fail_first, self.fail_always, self.delay_s = fail_first, fail_always, delay_s
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir).eval()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # one generation at a time; seeding is process-wide
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle

    def __enter__(self) -> CompletionServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, server.models())
                else:
                    self._send(404, server.error(f"no route {self.path}", "NotFoundError", 404))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError as err:
                    self._send(400, server.error(f"invalid JSON: {err}", "BadRequestError", 400))
                    return
                if self.path.rstrip("/") != "/v1/completions":
                    self._send(404, server.error(f"no route {self.path}", "NotFoundError", 404))
                    return
                self._send(*server.complete(body))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- API

    def models(self) -> dict[str, Any]:
        card = {
            "id": self.served_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "archer-tests",
            "root": self.model_dir,
            "max_model_len": self.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @staticmethod
    def error(message: str, kind: str, code: int, param: str | None = None) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def complete(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        time.sleep(self.delay_s)
        with self._lock:
            self.requests.append(body)
            if self.fail_always or len(self.requests) <= self.fail_first:
                return 500, self.error("EngineCore encountered an issue.", "InternalServerError", 500)
        model = body.get("model")
        if model is not None and model != self.served_name:
            return 404, self.error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model")
        try:
            prompts = self._prompts(body.get("prompt"))
            n = int(body.get("n", 1))
            max_tokens = int(body.get("max_tokens") or 16)
            temperature = float(body.get("temperature") if body.get("temperature") is not None else 1.0)
            top_p = float(body.get("top_p") if body.get("top_p") is not None else 1.0)
        except (TypeError, ValueError) as err:
            return 400, self.error(str(err), "BadRequestError", 400)
        for ids in prompts:
            if len(ids) + max_tokens > self.max_model_len:
                message = (
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{max_tokens} output tokens and your prompt contains {len(ids)} input tokens, for a total of "
                    f"{len(ids) + max_tokens} tokens. Please reduce the length of the input prompt or the number "
                    "of requested output tokens."
                )
                return 400, self.error(message, "BadRequestError", 400, "input_tokens")
        choices, completion_tokens = [], 0
        for p, ids in enumerate(prompts):
            with self._lock:
                samples = self._generate(ids, n, temperature, top_p, max_tokens, body.get("seed"))
            for j, (text, count, finish) in enumerate(samples):
                choices.append(
                    {"index": p * n + j, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                )
                completion_tokens += count
        prompt_tokens = sum(len(ids) for ids in prompts)
        return 200, {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.served_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # -- generation

    def _prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")
        out = []
        for item in prompt:
            if isinstance(item, str):
                out.append(self.tokenizer(item)["input_ids"])
            elif isinstance(item, list) and item and all(isinstance(t, int) and t >= 0 for t in item):
                out.append(item)
            else:
                raise ValueError(f"prompt: expected text or token ids, got {item!r}")
        return out

    def _generate(
        self, ids: list[int], n: int, temperature: float, top_p: float, max_tokens: int, seed: int | None
    ) -> list[tuple[str, int, str]]:
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        sampling = {"do_sample": False} if temperature < 1e-5 else {"do_sample": True, "temperature": temperature}
        if sampling["do_sample"]:
            sampling |= {"top_p": top_p, "top_k": 0}
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                num_return_sequences=n,
                pad_token_id=pad,
                **sampling,
            )
        samples = []
        for row in out[:, len(ids) :].tolist():
            finish, tokens = "length", row
            if eos in row:
                finish, tokens = "stop", row[: row.index(eos)]  # vLLM counts and drops the EOS
            count = len(tokens) + (finish == "stop")  # vLLM counts the EOS as a completion token
            samples.append((self.tokenizer.decode(tokens, skip_special_tokens=True), count, finish))
        return samples
