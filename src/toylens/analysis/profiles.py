"""What the analyses need to know about a task, in one place.

- `outputs_are_tokens`: whether output id i is input token i (sorting, language modelling,
  induction), so copying scores and the "attend to the next output" score make sense; not for
  classification, whose outputs are classes.
- `random_token_ids`: the ids repeated random sequences are drawn from: the input vocabulary
  without the task's special tokens (SEP, BOS, padding, end-of-text).
- `bos_token`: what starts a repeated random sequence.
- `output_labels`: names of the output ids (token labels, or class names).

A task not listed here is analysed with the safe defaults (outputs are not tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor

from toylens.tasks import Task

OUTPUTS_ARE_TOKENS = {"sort": True, "induction": True, "lm": True, "classify": False}
SPECIAL_TOKEN_ATTRS = ("sep", "bos", "eos", "pad", "pad_id", "bos_id", "eos_id")


def outputs_are_tokens(task: Task | str) -> bool:
    return OUTPUTS_ARE_TOKENS.get(task if isinstance(task, str) else task.name, False)


def special_tokens(task: Task) -> list[int]:
    """SEP/BOS/padding ids of the task, and of its tokenizer (end-of-text, padding, the
    [SEP]-style tokens it appends) for text tasks."""
    tok = getattr(task, "tokenizer", None)
    found = [getattr(task, attr, None) for attr in SPECIAL_TOKEN_ATTRS]
    found += [getattr(tok, attr, None) for attr in SPECIAL_TOKEN_ATTRS] + list(getattr(tok, "suffix_ids", []))
    return sorted({v for v in found if isinstance(v, int) and 0 <= v < task.spec.d_vocab})


def bos_token(task: Task) -> int | None:
    """The task's BOS token; for text tasks without one, the tokenizer's end-of-text token (which
    GPT-2-style models read as the start of a text)."""
    bos = getattr(task, "bos", None)
    if bos is None:
        bos = getattr(getattr(task, "tokenizer", None), "eos_id", None)
    return bos if isinstance(bos, int) else None


def random_token_ids(task: Task) -> Tensor:
    ids = torch.arange(task.spec.d_vocab)
    special = special_tokens(task)
    return ids[~torch.isin(ids, torch.tensor(special, dtype=torch.long))] if special else ids


def output_labels(task: Task) -> list[str]:
    if outputs_are_tokens(task):
        return task.token_labels(torch.arange(task.spec.d_vocab_out))
    names = getattr(task, "class_names", None) or getattr(task, "labels", None)
    if isinstance(names, (list, tuple)) and len(names) == task.spec.d_vocab_out:
        return [str(n) for n in names]
    return [f"class {i}" for i in range(task.spec.d_vocab_out)]
