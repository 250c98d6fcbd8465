"""Publishing run folders and training checkpoints to the Hugging Face Hub (or any Hub-compatible server).

What goes up is chosen twice: an allowlist picks the files a model repo needs (model, tokenizer, card, configs,
metrics, plots, eval summaries) and a denylist (:data:`DENY_PATTERNS`) removes anything that holds optimizer or RNG
state or could hold a secret, whatever the allowlist says. The server is ``HF_ENDPOINT`` unless ``endpoint`` is
given; the token comes from the usual huggingface_hub places (``HF_TOKEN``, ``hf auth login``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import filter_repo_objects, validate_repo_id
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from archer.errors import UserError
from archer.files import atomic_write_text
from archer.network import check_endpoint, network_errors

logger = logging.getLogger(__name__)

# Never pushed, wherever they sit in the folder (patterns use huggingface_hub's fnmatch rules: `*` crosses `/`).
DENY_PATTERNS: tuple[str, ...] = (
    # optimizer, scheduler, grad-scaler and RNG states; DeepSpeed's sharded optimizer states
    "*optimizer*.pt",
    "*optimizer*.bin",
    "*scheduler*.pt",
    "*scaler*.pt",
    "*rng_state*.pth",
    "global_step*/",
    "*/global_step*/",
    # pickled TrainingArguments: may carry hub_token, and unpickling is unsafe
    "*training_args.bin",
    # secrets
    "*.env",
    ".env*",
    "*/.env*",
    "*token",
    "*token.txt",
    "*tokens",
    "*.pem",
    "*.key",
    "*.netrc",
    "*credentials*",
    "*secret*",
    ".git*",
    "*/.git*",
    ".cache/",
    "*/.cache/",
    # our own staging folders for background checkpoint pushes
    ".archer-push-*",
)

# Top-level files of a run folder that belong in the model repo.
RUN_TOP_LEVEL = (
    "README.md",
    "*.json",  # config, generation config, tokenizer files, train_results, trainer_state, safetensors index
    "*.safetensors",
    "*.jinja",  # chat template
    "merges.txt",
    "vocab.txt",
    "*.model",  # sentencepiece
    "*.tiktoken",
    "config.yaml",
    "recipe.yaml",
    "metrics.jsonl",
)
RUN_SUBFOLDERS = (
    "plots/*.png",
    "plots/*.svg",
    "plots/*.pdf",
    "eval/*/results.json",
    "eval/*/results.md",
    "runs/*/events.out.tfevents.*",  # TensorBoard logs (report_to: tensorboard): the Hub shows them as metrics
)


@dataclass(frozen=True)
class PushResult:
    """Where a push landed. ``changed`` is False when the revision already held identical files (no new commit)."""

    repo_id: str
    revision: str
    commit_url: str
    commit_oid: str
    changed: bool
    files: tuple[str, ...]


def _relative_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _allowed(paths: list[str], allow: tuple[str, ...] | list[str] | None = None) -> list[str]:
    patterns = None if allow is None else list(allow)
    return list(filter_repo_objects(paths, allow_patterns=patterns, ignore_patterns=list(DENY_PATTERNS)))


def select_run_files(run_dir: str | os.PathLike) -> list[str]:
    """Relative paths of a run folder's files that a push uploads (checkpoints excluded: they go to branches)."""
    paths = _relative_files(Path(run_dir))
    top_level = [p for p in paths if "/" not in p]
    return sorted(_allowed(top_level, RUN_TOP_LEVEL) + _allowed([p for p in paths if "/" in p], RUN_SUBFOLDERS))


def select_checkpoint_files(checkpoint_dir: str | os.PathLike) -> list[str]:
    """Relative paths of a checkpoint folder's files that a push uploads: all of them but :data:`DENY_PATTERNS`."""
    return _allowed(_relative_files(Path(checkpoint_dir)))


def resolve_token(token: str | None = None) -> str:
    """The token to push with: ``token`` if given, else huggingface_hub's (``HF_TOKEN``, then the saved login)."""
    token = token or get_token()
    if not token:
        raise UserError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` (a write token is needed)")
    return token


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(
            f"repo {repo_id!r} is not a valid repo id: use <org or user>/<name> ({' '.join(str(err).split())})"
        ) from None
    if "/" not in repo_id:
        raise UserError(f"repo {repo_id!r}: name the namespace too, as <org or user>/<name>")
    return repo_id


@contextlib.contextmanager
def _hub_errors(api: HfApi, repo_id: str) -> Iterator[None]:
    """Turn the Hub's answers to user mistakes (bad token, no write access) into one-line UserErrors."""
    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise UserError(
                f"{api.endpoint} refused to let this token write to {repo_id} (HTTP {status}): "
                "check HF_TOKEN / `hf auth login` and that the token has write access to the namespace"
            ) from None
        raise


def push_files(
    folder: str | os.PathLike,
    repo_id: str,
    files: list[str],
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload with archer",
) -> PushResult:
    """Upload ``files`` (paths relative to ``folder``) to ``repo_id`` at branch ``revision`` (default ``main``).

    Creates the repo (``private`` only applies then) and the branch if needed. Identical files are not re-uploaded,
    and a push that changes nothing creates no commit.
    """
    if not files:
        raise UserError(f"{folder}: nothing to push (no file passes the allow / deny patterns of archer.publish.hub)")
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    with network_errors(f"push to {repo_id}", repo_id, url=endpoint), _hub_errors(api, repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.repo_info(repo_id, revision=branch)
        if private and not info.private:
            logger.warning("%s already exists and is public: --private only applies when creating a repo", repo_id)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=Path(folder),
            revision=branch,
            allow_patterns=[glob.escape(path) for path in files],
            ignore_patterns=list(DENY_PATTERNS),
            commit_message=commit_message,
        )
    return PushResult(repo_id, branch, commit.commit_url, commit.oid, commit.oid != info.sha, tuple(files))


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    base_results: str | os.PathLike | None = None,
) -> PushResult:
    """Render the run's model card, then push the model, tokenizer, card, configs, metrics and plots.

    Nothing in the run folder changes until the push has succeeded: the card is rendered into a staging folder
    (hard links to the run's files beside it, removed afterwards) and written to ``<run>/README.md`` only then.
    One request with a short timeout checks the endpoint and the token first, so an unreachable Hub fails at once.
    """
    from archer.publish.card import render_card  # the card pulls in jinja2 and the eval reader: only when pushing

    run_dir = Path(run_dir)
    check_repo_id(repo_id)
    token = resolve_token(token)  # fail before writing anything
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: no model to push (config.json missing); MODEL must be a finished run folder")
    card = str(render_card(run_dir, repo_id=repo_id, base_results=base_results))
    check_endpoint(f"push to {repo_id}", repo_id, token=token, url=endpoint)
    files = sorted({*select_run_files(run_dir), "README.md"})
    logger.info("pushing %d files of %s to %s", len(files), run_dir, repo_id)
    staging = _stage(run_dir, [name for name in files if name != "README.md"])
    try:
        (staging / "README.md").write_text(card, encoding="utf-8")  # a new file, never a link to the run's card
        result = push_files(
            staging,
            repo_id,
            files,
            revision=revision,
            private=private,
            token=token,
            endpoint=endpoint,
            commit_message=f"Upload {run_dir.name} with archer",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(run_dir / "README.md", card)  # the local card is the published one
    return result


class CheckpointPusher(TrainerCallback):
    """Push each saved ``checkpoint-<N>`` to branch ``<branch_prefix>step-<N>`` of ``repo_id``, in the background.

    ``on_save`` only hard-links the checkpoint's pushable files into a staging folder (so that checkpoint rotation
    cannot delete them mid-upload) and queues the upload on one worker thread: training never waits for the network.
    A failed push is logged and recorded in ``errors``, never raised. ``on_train_end`` waits for pending pushes.
    Only the main process pushes.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        branch_prefix: str = "",
        private: bool = False,
        token: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.repo_id = check_repo_id(repo_id)
        self.branch_prefix = branch_prefix
        self.private = private
        self.token = resolve_token(token)  # a missing token fails at start-up, not after hours of training
        self.endpoint = endpoint
        self.results: dict[int, PushResult] = {}
        self.errors: dict[int, BaseException] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._lock = threading.Lock()

    def branch(self, step: int) -> str:
        return f"{self.branch_prefix}step-{step}"

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        assert args.output_dir is not None  # TrainingArguments.__post_init__ fills in its default
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not checkpoint.is_dir():
            logger.warning("not pushing step %d: %s does not exist", state.global_step, checkpoint)
            return
        staging = _stage(checkpoint, select_checkpoint_files(checkpoint))
        with self._lock:
            if self._executor is None:  # one worker: pushes land in step order, one commit at a time
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archer-push")
            self._pending.append(self._executor.submit(self._push, state.global_step, staging))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.wait()

    def wait(self) -> None:
        """Block until every queued push has finished (successfully or not), then stop the worker thread."""
        with self._lock:
            pending, self._pending = self._pending, []
            executor, self._executor = self._executor, None
        if pending:
            logger.info("waiting for %d checkpoint push(es) to %s", sum(not f.done() for f in pending), self.repo_id)
            wait(pending)
        if executor is not None:
            executor.shutdown(wait=True)

    def _push(self, step: int, staging: Path) -> None:
        try:
            result = push_files(
                staging,
                self.repo_id,
                select_checkpoint_files(staging),
                revision=self.branch(step),
                private=self.private,
                token=self.token,
                endpoint=self.endpoint,
                commit_message=f"Checkpoint at step {step}",
            )
            self.results[step] = result
            logger.info("pushed checkpoint-%d to %s@%s: %s", step, self.repo_id, result.revision, result.commit_url)
        except Exception as err:  # a failed upload must never stop training
            self.errors[step] = err
            logger.error("push of checkpoint-%d to %s failed: %s", step, self.repo_id, err)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _stage(checkpoint: Path, files: list[str]) -> Path:
    """Hard-link (copy where links fail) ``files`` of ``checkpoint`` (or a run folder) into a hidden sibling folder
    of it."""
    staging = Path(tempfile.mkdtemp(prefix=f".archer-push-{checkpoint.name}-", dir=checkpoint.parent))
    for relative in files:
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(checkpoint / relative, target)
        except OSError:
            shutil.copy2(checkpoint / relative, target)
    return staging
