"""A tiny byte-level BPE tokenizer for the embedded default, trained offline on the arithmetic task.

It uses exactly Qwen2's normaliser and pre-tokeniser (NFC, Qwen2's split regex, ByteLevel without regex), so when a
saved folder also holds a qwen2 ``config.json`` and ``AutoTokenizer`` rebuilds it as ``Qwen2Tokenizer``, the ids do
not change. Digits stay single tokens (the regex isolates each one). ``<think>``, ``</think>`` and ``\\boxed{`` are
added as NON-special tokens: TRL decodes completions with ``skip_special_tokens=True``, and special ones would vanish
before the reward sees them.
"""

from __future__ import annotations

import random
import re
import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from archer.data.arithmetic import BOXED_OPEN, THINK_CLOSE, THINK_OPEN, ArithmeticTask
from archer.errors import UserError

EOS_TOKEN = "<|endoftext|>"
MARKER_TOKENS = (THINK_OPEN, THINK_CLOSE, BOXED_OPEN)
# Every printable ASCII character is in the base alphabet, so any ASCII text encodes without loss.
_ALPHABET_TEXT = string.printable.replace("\x0b", "").replace("\x0c", "")
_CORPUS_PROBLEMS = 4000
_CORPUS_SEED = 0
_MARKER_RE = re.compile("|".join(re.escape(m) for m in MARKER_TOKENS))


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _corpus(task: ArithmeticTask) -> list[str]:
    """Training prompts and completions, cut at the marker tokens as encoding does (markers are added whole)."""
    rng = random.Random(_CORPUS_SEED)
    texts = []
    for _ in range(_CORPUS_PROBLEMS):
        problem = task.sample(rng)
        texts += [problem.prompt, *(piece for piece in _MARKER_RE.split(problem.worked) if piece)]
    return texts


def build_tokenizer(vocab_size: int = 128, task: ArithmeticTask | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most ``vocab_size`` entries (printable ASCII + merges) on ``task``'s text, offline.

    Deterministic: the same arguments give the same vocabulary. ``eos`` and ``pad`` are ``<|endoftext|>`` (id 0),
    as in Qwen2; the three marker tokens come after the BPE vocabulary.
    """
    task = task or ArithmeticTask()
    alphabet = sorted(set(pre_tokenizers.ByteLevel(use_regex=False).pre_tokenize_str(_ALPHABET_TEXT)[0][0]))
    if vocab_size < len(alphabet) + 1:
        raise UserError(f"tokenizer vocab_size={vocab_size}: must be >= {len(alphabet) + 1} (alphabet + end-of-text)")

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(task), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
