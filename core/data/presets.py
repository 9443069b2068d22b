"""The paper's ten tasks (SuperGLUE + WinoGrande, StoryCloze, HellaSwag), loaded through `datasets`.

Each preset turns one Hub row into {"text", "label"}: the row's fields are formatted into `text`,
and the template only adds the answer cue. Answer words are single tokens for GPT-2-style BPE
tokenizers (SmolLM2, Llama 3); core.data.prompts checks that for the model in use. Labelled test
splits are not public for SuperGLUE, so the Hub's validation split becomes our test split and
val is carved from train (seeded): estimation never looks at test rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.data.tasks import Task, check_rows
from core.errors import DataError


@dataclass(frozen=True)
class Preset:
    hub: tuple[str, str | None]  # (dataset id, config)
    labels: dict[str, str]
    format_row: Callable[[dict], dict]
    template: str = "{text}\nAnswer:"
    description: str = ""
    splits: tuple[str, str] = ("train", "validation")  # -> our train + val, and our test
    manual: str = ""  # what to do when the Hub cannot serve it


def _cb(r):
    text = f"{r['premise']}\nQuestion: {r['hypothesis']} True, False, or Neither?"
    return {"text": text, "label": ["true", "false", "neither"][r["label"]]}


def _rte(r):
    text = f"{r['premise']}\nQuestion: {r['hypothesis']} True or False?"
    return {"text": text, "label": ["true", "false"][r["label"]]}


def _copa(r):
    q = "What was the cause?" if r["question"] == "cause" else "What happened as a result?"
    text = f"{r['premise']} {q}\nA: {r['choice1']}\nB: {r['choice2']}"
    return {"text": text, "label": "AB"[r["label"]]}


def _wic(r):
    text = (
        f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\n"
        f"Is the word '{r['word']}' used with the same meaning in both sentences? yes or no?"
    )
    return {"text": text, "label": ["no", "yes"][r["label"]]}


def _wsc(r):
    text = f"{r['text']}\nIn the passage above, does '{r['span2_text']}' refer to '{r['span1_text']}'? yes or no?"
    return {"text": text, "label": ["no", "yes"][r["label"]]}


def _boolq(r):
    text = f"{r['passage']}\nQuestion: {r['question']}? true or false?"
    return {"text": text, "label": ["false", "true"][r["label"]]}


def _multirc(r):
    text = f"{r['paragraph']}\nQuestion: {r['question']}\nCandidate answer: {r['answer']}\nIs it correct? yes or no?"
    return {"text": text, "label": ["no", "yes"][r["label"]]}


def _winogrande(r):
    text = f"{r['sentence']}\nWhat does _ stand for?\n1: {r['option1']}\n2: {r['option2']}"
    return {"text": text, "label": str(r["answer"])}


def _storycloze(r):
    story = " ".join(r[f"input_sentence_{i}"] for i in range(1, 5))
    text = f"{story}\nWhich ending fits?\n1: {r['sentence_quiz1']}\n2: {r['sentence_quiz2']}"
    return {"text": text, "label": str(r["answer_right_ending"])}


def _hellaswag(r):
    endings = "\n".join(f"{'ABCD'[i]}: {e}" for i, e in enumerate(r["endings"]))
    text = f"{r['ctx']}\nWhich ending fits best?\n{endings}"
    return {"text": text, "label": "ABCD"[int(r["label"])]}


PAPER_TASKS: dict[str, Preset] = {
    "cb": Preset(
        ("super_glue", "cb"), {"true": " True", "false": " False", "neither": " Neither"}, _cb
    ),
    "rte": Preset(("super_glue", "rte"), {"true": " True", "false": " False"}, _rte),
    "copa": Preset(("super_glue", "copa"), {"A": " A", "B": " B"}, _copa),
    "wic": Preset(("super_glue", "wic"), {"no": " no", "yes": " yes"}, _wic),
    "wsc": Preset(("super_glue", "wsc.fixed"), {"no": " no", "yes": " yes"}, _wsc),
    "boolq": Preset(("super_glue", "boolq"), {"false": " false", "true": " true"}, _boolq),
    "multirc": Preset(("super_glue", "multirc"), {"no": " no", "yes": " yes"}, _multirc),
    "winogrande": Preset(
        ("allenai/winogrande", "winogrande_xl"), {"1": " 1", "2": " 2"}, _winogrande
    ),
    "storycloze": Preset(
        ("LSDSem/story_cloze", "2016"),
        {"1": " 1", "2": " 2"},
        _storycloze,
        splits=("validation", "test"),  # it has no train split: the paper trains on validation
        manual="Story Cloze is not downloadable from the Hub: request it at "
        "https://cs.rochester.edu/nlp/rocstories/, then load_dataset('LSDSem/story_cloze', "
        "'2016', data_dir=...) and save_to_disk it, and give that folder as the task's path",
    ),
    "hellaswag": Preset(("Rowan/hellaswag", None), {k: f" {k}" for k in "ABCD"}, _hellaswag),
}


def format_rows(name: str, hub_rows: list[dict]) -> list[dict]:
    """Turn Hub rows of a preset task into our row format (validated)."""
    preset = PAPER_TASKS[name]
    rows = [preset.format_row(r) for r in hub_rows]
    return check_rows(rows, preset.labels, f"preset {name}")


def build_task(name: str, train_rows: list[dict], eval_rows: list[dict], seed: int = 0) -> Task:
    """A preset task from Hub train rows (-> train + val, 90/10 as the paper) and validation
    rows (-> test)."""
    preset = PAPER_TASKS[name]
    train = format_rows(name, train_rows)
    rng = random.Random(f"{seed}-{name}")
    rng.shuffle(train)
    n_val = max(1, min(len(train) // 10, 500))
    return Task(
        name=name,
        template=preset.template,
        labels=dict(preset.labels),
        splits={"train": train[n_val:], "val": train[:n_val], "test": format_rows(name, eval_rows)},
        description=preset.description or f"{preset.hub[0]} {preset.hub[1] or ''}".strip(),
        source=f"hf:{preset.hub[0]}" + (f":{preset.hub[1]}" if preset.hub[1] else ""),
    )


def load_paper_task(name: str, seed: int = 0, path: str | Path | None = None) -> Task:
    """One of the paper's tasks from the Hub (online), or from `path`: a `datasets` folder
    (save_to_disk) shaped like the Hub's dataset, with the same splits and columns."""
    import datasets

    preset = PAPER_TASKS[name]
    where = str(path) if path is not None else f"{preset.hub[0]} on the Hub"
    hint = preset.manual or "Offline, use the sample tasks in sample_data/ or a saved copy"
    try:
        ds = (
            datasets.load_from_disk(str(path))
            if path is not None
            else datasets.load_dataset(*preset.hub)
        )
    except Exception as err:
        raise DataError(f"preset task {name!r}: loading {where} failed: {err}. {hint}.") from None
    missing = [s for s in preset.splits if s not in ds]
    if missing:
        raise DataError(
            f"preset task {name!r}: {where} has no {', '.join(missing)} split (it has "
            f"{', '.join(ds)}). {hint}."
        )
    train, test = preset.splits
    return build_task(name, list(ds[train]), list(ds[test]), seed=seed)
