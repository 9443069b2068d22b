"""Prompts as token ids: token-budget truncation, answer-word tokens, padded batches.

Every task is next-token classification: the prompt ends right before the answer word, and each
answer word is ONE token, so the model's logits at the last prompt position score all choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.tasks import Task
from core.errors import DataError


def answer_token_ids(tokenizer, task: Task) -> list[int]:
    """Token id of each answer word, in label order; each word must be exactly one token."""
    ids = []
    for label, word in task.labels.items():
        toks = tokenizer.encode(word, add_special_tokens=False)
        if len(toks) != 1:
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise DataError(
                f"answer word {word!r} (label {label!r}) is {len(toks)} tokens {pieces} for this "
                "tokenizer; pick a word that is one token (a leading space usually helps)",
                file=f"task {task.name}",
                field="labels",
            )
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise DataError(
            "two answer words map to the same token", file=f"task {task.name}", field="labels"
        )
    return ids


def _fit_field(tokenizer, text: str, n_tokens: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= n_tokens else tokenizer.decode(ids[: max(n_tokens, 0)])


def encode_prompt(tokenizer, task: Task, row: dict, max_tokens: int) -> list[int]:
    """Token ids of the rendered prompt, cutting the text fields (not the template) to fit."""
    prompt = task.render(row)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return ids
    fixed = len(
        tokenizer.encode(task.render({"text": "", "text_pair": ""}), add_special_tokens=False)
    )
    budget = max_tokens - fixed
    if budget < 4:
        raise DataError(
            f"the template alone is {fixed} tokens, over the budget of {max_tokens}",
            file=f"task {task.name}",
            field="data.max_tokens",
        )
    has_pair = bool(row.get("text_pair"))
    for _ in range(4):  # re-tokenising a cut string can shift a token or two: shrink and retry
        share = budget // 2 if has_pair else budget
        cut = {"text": _fit_field(tokenizer, row["text"], share)}
        if has_pair:
            cut["text_pair"] = _fit_field(tokenizer, row["text_pair"], budget - share)
        ids = tokenizer.encode(task.render(cut), add_special_tokens=False)
        if len(ids) <= max_tokens:
            return ids
        budget -= len(ids) - max_tokens
    return ids[:max_tokens]


@dataclass
class Encoded:
    """One split of one task as token ids. `gold` indexes `choice_ids`."""

    task: str
    split: str
    input_ids: list[list[int]]
    gold: np.ndarray  # (n,)
    choice_ids: list[int]  # (C,)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids])


def encode_split(tokenizer, task: Task, split: str, max_tokens: int) -> Encoded:
    rows = task.rows(split)
    return Encoded(
        task=task.name,
        split=split,
        input_ids=[encode_prompt(tokenizer, task, r, max_tokens) for r in rows],
        gold=np.array(task.gold(split), dtype=np.int64),
        choice_ids=answer_token_ids(tokenizer, task),
    )


def batches(n: int, batch_size: int, lengths=None):
    """Index batches; with lengths, sorted by length so padding is small (order restored by caller)."""
    order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def pad_batch(seqs: list[list[int]], pad_id: int, device=None) -> dict:
    """Left-padded model inputs, so every row's answer position is the last column.

    Left padding lets the model compute logits for one position only (`logits_to_keep=1`,
    a large saving with a 49k vocabulary); explicit position ids keep each row's positions
    identical to the unpadded sequence, so padding never changes a result.
    """
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch
