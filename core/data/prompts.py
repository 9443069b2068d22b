"""Prompts as token ids: token-budget truncation, answer-word tokens, padded batches.

Every task is classification by answer words: the prompt ends right before the answer word, and
a choice's score is its word's log-probability given the prompt (summed over the word's tokens).
One-token words are all scored by the logits at the last prompt position; a longer word also
needs the prompt followed by its first tokens (`Answers`, `Encoded.sequences`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.tasks import Task
from core.errors import DataError


@dataclass(frozen=True)
class Answers:
    """Each answer word's token ids, in label order, and how one forward scores them all.

    A choice's score is the sum of its tokens' log-probabilities given the prompt. For a word of
    L tokens that needs the logits at the last L positions of the prompt followed by the word's
    first L − 1 tokens: its "continuation". Words sharing a continuation share one sequence, so
    one-token words (continuation empty) need the prompt alone: one sequence per row.
    """

    tokens: tuple[tuple[int, ...], ...]  # (C,)

    @property
    def single(self) -> bool:
        return all(len(t) == 1 for t in self.tokens)

    @property
    def ids(self) -> list[int]:
        """The token id of each word (one-token words only)."""
        assert self.single, "multi-token answer words have no single id"
        return [t[0] for t in self.tokens]

    @property
    def continuations(self) -> list[tuple[int, ...]]:
        """The distinct continuations, in first-use order: the sequences per row."""
        return list(dict.fromkeys(t[:-1] for t in self.tokens))

    @property
    def sequence_of(self) -> list[int]:
        """For each choice, the index of its continuation."""
        where = {c: i for i, c in enumerate(self.continuations)}
        return [where[t[:-1]] for t in self.tokens]

    @property
    def width(self) -> int:
        """Positions whose logits a forward must keep (the longest word's token count)."""
        return max(len(t) for t in self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)


def answer_tokens(tokenizer, task: Task) -> Answers:
    """The answer words' token ids, in label order. A word must have at least one token and no
    two words the same tokens (they could not be told apart)."""
    tokens, seen = [], {}
    for label, word in task.labels.items():
        toks = tuple(tokenizer.encode(word, add_special_tokens=False))
        if not toks:
            raise DataError(
                f"answer word {word!r} (label {label!r}) has no tokens",
                file=f"task {task.name}",
                field="labels",
            )
        if toks in seen:
            raise DataError(
                f"answer words {seen[toks]!r} and {word!r} are the same tokens",
                file=f"task {task.name}",
                field="labels",
            )
        seen[toks] = word
        tokens.append(toks)
    return Answers(tuple(tokens))


MIN_TEXT_TOKENS = 4  # what data.max_tokens must leave for the text after the template


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
    if budget < MIN_TEXT_TOKENS:
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
    """One split of one task as token ids. `gold` indexes the answer words."""

    task: str
    split: str
    input_ids: list[list[int]]
    gold: np.ndarray  # (n,)
    answers: Answers

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def choice_ids(self) -> list[int]:
        return self.answers.ids

    def sequences(self) -> Encoded:
        """Every (row, continuation) sequence as its own row, rows first: what a forward
        scoring multi-token answer words runs (core.models.scoring.choice_scores). A one-token
        task is its own prompts."""
        if self.answers.single:
            return self
        if "_sequences" not in self.__dict__:  # built once: batches ask for it again and again
            conts = self.answers.continuations
            ids = [list(row) + list(c) for row in self.input_ids for c in conts]
            gold = np.repeat(self.gold, len(conts))
            seqs = Encoded(self.task, f"{self.split}-answers", ids, gold, self.answers)
            self.__dict__["_sequences"] = seqs
        return self.__dict__["_sequences"]

    def sequence_rows(self, idx) -> np.ndarray:
        """The indices in `sequences()` of rows `idx`, each row's continuations together."""
        per = len(self.answers.continuations) if not self.answers.single else 1
        idx = np.asarray(idx)
        return (idx[:, None] * per + np.arange(per)[None, :]).reshape(-1)

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
        answers=answer_tokens(tokenizer, task),
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
