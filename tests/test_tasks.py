"""Task layer: every format, prompt rendering, and each bad input named in the Foundation issue."""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLE, sentiment_rows, write_task

from core.config import TaskSpec, parse_config
from core.data.presets import PAPER_TASKS, build_task, format_rows
from core.data.sources import load_task, load_task_file, load_task_folder, load_tasks
from core.data.tasks import answer_word_overlaps, render_template, split_rows
from core.errors import DataError

LABELS = {"negative": " negative", "positive": " positive"}


def _cfg(root, tasks, **data):
    return parse_config({"tasks": tasks, "data": {"root": str(root), **data}}, base_dir=root)


def test_task_folder_loads_and_renders(tiny_task_root):
    task = load_task_folder(tiny_task_root / "alpha")
    assert task.name == "alpha"
    assert [len(task.rows(s)) for s in ("train", "val", "test")] == [12, 6, 6]
    assert task.render(task.rows("train")[0]).startswith("Review: The food was great")
    assert task.gold("train")[:2] == [1, 0]  # positive is label index 1
    assert len(task.content_hash()) == 16


def test_content_hash_changes_with_rows_and_template(tiny_task_root):
    a = load_task_folder(tiny_task_root / "alpha")
    h = a.content_hash()
    a.template = "Text: {text}\nMood:"
    assert a.content_hash() != h


def test_csv_and_jsonl_user_files(tmp_path):
    rows = sentiment_rows(40)
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows))
    jsonl_path = tmp_path / "mine.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path in (csv_path, jsonl_path):
        task = load_task_file(path, TaskSpec(name="mine"))
        assert task.labels == LABELS  # default answer word: " " + label
        assert sum(len(task.rows(s)) for s in ("train", "val", "test")) == 40
        # stratified: both labels in every split
        for split in ("train", "val", "test"):
            assert {r["label"] for r in task.rows(split)} == {"negative", "positive"}


def test_text_pair_gets_pair_template(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"text": f"a{i}", "text_pair": f"b{i}", "label": "yes" if i % 2 else "no"}
        for i in range(20)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task_file(path, TaskSpec(name="pairs"))
    assert "{text_pair}" in task.template
    row = task.rows("train")[0]
    assert row["text_pair"] in task.render(row)


def test_datasets_folder(tmp_path):
    import datasets

    rows = sentiment_rows(30)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "ds"))
    cfg = _cfg(tmp_path, [{"name": "hfdata", "path": str(tmp_path / "ds")}])
    task = load_task(cfg.tasks[0], cfg)
    assert sum(len(task.rows(s)) for s in ("train", "val", "test")) == 30
    assert set(task.labels) == {"negative", "positive"}


def test_split_rows_is_seeded_and_stratified():
    rows = sentiment_rows(100)
    a, b = split_rows(rows, seed=3), split_rows(rows, seed=3)
    assert a == b
    assert split_rows(rows, seed=4) != a
    assert sum(r["label"] == "positive" for r in a["train"]) == 30


@pytest.mark.parametrize(
    "content, expect",
    [
        ("", "file is empty"),
        ('{"text": "hi"}\n', "missing column(s) ['label']"),
        ('{"text": "hi", "label": "meh"}\n', "label 'meh' is not in the answer map"),
        ('{"text": "  ", "label": "positive"}\n', "empty or non-text value"),
        ('{"text": "ok", "label": "positive"}\n{not json\n', "row 2: invalid JSON"),
    ],
)
def test_bad_rows_name_file_row_field(tmp_path, content, expect):
    folder = write_task(
        tmp_path,
        "bad",
        {"train": sentiment_rows(4), "val": sentiment_rows(2), "test": sentiment_rows(2)},
        LABELS,
    )
    (folder / "train.jsonl").write_text(content)
    with pytest.raises(DataError) as err:
        load_task_folder(folder)
    assert "train.jsonl" in str(err.value)
    assert expect in str(err.value)


def test_bad_row_reports_row_number_and_field(tmp_path):
    folder = write_task(
        tmp_path,
        "bad",
        {"train": sentiment_rows(4), "val": sentiment_rows(2), "test": sentiment_rows(2)},
        LABELS,
    )
    lines = [json.dumps(r) for r in sentiment_rows(3)] + [
        json.dumps({"text": "x", "label": "nope"})
    ]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_task_folder(folder)
    assert err.value.row == 4 and err.value.field == "label"


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\ncaf\xe9 ok,positive\n")
    with pytest.raises(DataError, match=r"latin.csv, row 2: not UTF-8"):
        load_task_file(path, TaskSpec(name="latin"))


def test_csv_extra_cells(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text,label\nhello,positive,surprise\n")
    with pytest.raises(DataError, match="row 1: more cells than columns"):
        load_task_file(path, TaskSpec(name="x"))


def test_missing_split_and_template_errors(tmp_path):
    folder = write_task(
        tmp_path, "nosplit", {"train": sentiment_rows(4), "val": sentiment_rows(2)}, LABELS
    )
    with pytest.raises(DataError, match="missing test split"):
        load_task_folder(folder)
    folder = write_task(
        tmp_path,
        "badtpl",
        {s: sentiment_rows(4) for s in ("train", "val", "test")},
        LABELS,
        template="Review: {review}",
    )
    with pytest.raises(DataError, match="field 'template'"):
        load_task_folder(folder)


@pytest.mark.parametrize(
    "template",
    ["{text.__class__} {text}", "{text[0]} {text}", "{text!r}", "{text:>40}", "{} {text}"],
)
def test_templates_cannot_reach_attributes(tmp_path, template):
    """A user template reads the row's text and nothing else: attribute and index access,
    conversions and format specs are refused with the file and field named."""
    folder = write_task(
        tmp_path, "sneaky", {s: sentiment_rows(4) for s in ("train", "val", "test")}, LABELS,
        template=template,
    )  # fmt: skip
    with pytest.raises(DataError, match=r"task.yaml.*field 'template'.*is not allowed"):
        load_task_folder(folder)


def test_templates_render_fields_and_literal_braces():
    from core.data.tasks import render_template

    row = {"text": "a {b}", "text_pair": "c"}
    assert render_template("{{x}} {text} / {text_pair}", row) == "{x} a {b} / c"
    assert render_template("{text} {text_pair}", {"text": "a"}) == "a "


def test_duplicate_answer_words(tmp_path):
    folder = write_task(
        tmp_path,
        "dup",
        {s: sentiment_rows(4) for s in ("train", "val", "test")},
        {"negative": " same", "positive": " same"},
    )
    with pytest.raises(DataError, match="answer words must differ"):
        load_task_folder(folder)


def test_single_label_train_is_refused(tmp_path):
    rows = [r for r in sentiment_rows(20) if r["label"] == "positive"]
    write_task(
        tmp_path,
        "mono",
        {"train": rows, "val": sentiment_rows(4), "test": sentiment_rows(4)},
        LABELS,
    )
    cfg = _cfg(tmp_path, ["mono"])
    with pytest.raises(DataError, match="single label"):
        load_tasks(cfg)


def test_unknown_task_is_named(tmp_path):
    cfg = _cfg(tmp_path, ["ghost"])
    with pytest.raises(DataError, match="task 'ghost' not found"):
        load_tasks(cfg)


def test_subsampling_caps_rows(tiny_task_root):
    cfg = _cfg(tiny_task_root, ["alpha", "beta"], max_train=5, max_val=3, max_test=2)
    tasks = load_tasks(cfg)
    assert [len(t.rows("train")) for t in tasks] == [5, 5]
    assert [len(t.rows("test")) for t in tasks] == [2, 2]
    assert load_tasks(cfg)[0].rows("train") == tasks[0].rows("train")  # seeded


def test_answer_word_overlap_warning(tiny_task_root):
    cfg = _cfg(tiny_task_root, ["alpha", "beta"])
    overlaps = answer_word_overlaps(load_tasks(cfg))
    assert overlaps == [("alpha", "beta", [" negative", " positive"])]


@pytest.mark.skipif(not (SAMPLE / "tasks").is_dir(), reason="sample_data not built")
def test_sample_tasks_all_load():
    names = sorted(p.name for p in (SAMPLE / "tasks").iterdir() if p.is_dir())
    assert len(names) == 10
    cfg = _cfg(SAMPLE / "tasks", names)
    tasks = load_tasks(cfg)
    assert all(len(t.rows("train")) > 50 for t in tasks)
    # unrelated tasks never share an answer-word pair by accident
    for a, b, _ in answer_word_overlaps(tasks):
        assert {a, b} <= {"amazon", "imdb", "yelp", "rotten_tomatoes"}, (a, b)


# --- the paper's preset, on hand-typed rows --------------------------------------------------
HAND_ROWS = {
    "cb": {"premise": "It rained all day.", "hypothesis": "The ground is wet.", "label": 0},
    "rte": {"premise": "Paris is in France.", "hypothesis": "Paris is French.", "label": 0},
    "copa": {
        "premise": "The man fell.",
        "choice1": "He slipped.",
        "choice2": "He sang.",
        "question": "cause",
        "label": 0,
    },
    "wic": {"word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan.", "label": 0},
    "wsc": {
        "text": "Tom thanked Bob because he helped.",
        "span1_text": "Bob",
        "span2_text": "he",
        "label": 1,
    },
    "boolq": {
        "passage": "Water boils at 100 C.",
        "question": "does water boil at 100 c",
        "label": 1,
    },
    "multirc": {
        "paragraph": "Ann has a cat.",
        "question": "What pet?",
        "answer": "a cat",
        "label": 1,
    },
    "winogrande": {
        "sentence": "The cup fit in the bag because _ was small.",
        "option1": "cup",
        "option2": "bag",
        "answer": "1",
    },
    "storycloze": {
        "input_sentence_1": "Al woke.",
        "input_sentence_2": "He ate.",
        "input_sentence_3": "He left.",
        "input_sentence_4": "He drove.",
        "sentence_quiz1": "He got to work.",
        "sentence_quiz2": "He flew.",
        "answer_right_ending": 1,
    },
    "hellaswag": {
        "ctx": "A man picks up a guitar.",
        "endings": ["He plays.", "He eats.", "He swims.", "He sleeps."],
        "label": "0",
    },
}
EXPECTED_LABEL = {
    "cb": "true",
    "rte": "true",
    "copa": "A",
    "wic": "no",
    "wsc": "yes",
    "boolq": "true",
    "multirc": "yes",
    "winogrande": "1",
    "storycloze": "1",
    "hellaswag": "A",
}


@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_paper_preset_formatting(name):
    row = format_rows(name, [HAND_ROWS[name]])[0]
    assert row["label"] == EXPECTED_LABEL[name]
    prompt = render_template(PAPER_TASKS[name].template, row)
    assert prompt.endswith("Answer:")
    for value in HAND_ROWS[name].values():
        if isinstance(value, str) and len(value) > 3 and name not in ("winogrande",):
            assert value in prompt or value.startswith(("cause", "effect"))


def test_paper_preset_builds_splits():
    rows = [HAND_ROWS["rte"]] * 10
    task = build_task("rte", rows, rows[:3])
    assert (
        len(task.rows("val")) == 1 and len(task.rows("train")) == 9 and len(task.rows("test")) == 3
    )


LABEL_FIELD = {"winogrande": ("answer", ["1", "2"]), "storycloze": ("answer_right_ending", [1, 2]),
               "hellaswag": ("label", ["0", "1", "2", "3"]), "cb": ("label", [0, 1, 2])}  # fmt: skip


def _hub_like(name: str, n: int) -> list[dict]:
    """n rows shaped like the Hub dataset's, every label present."""
    field, values = LABEL_FIELD.get(name, ("label", [0, 1]))
    return [{**HAND_ROWS[name], field: values[i % len(values)]} for i in range(n)]


def test_the_paper_preset_builds_its_ten_tasks_from_local_datasets_folders(tmp_path):
    """Offline, as a user with saved copies of the Hub datasets: each task from its
    save_to_disk folder, with the paper's splits (train 90/10 -> train/val, validation -> test;
    Story Cloze, which has no train split, trains on validation and tests on test)."""
    import datasets

    from core.data.sources import load_tasks

    for name, preset in PAPER_TASKS.items():
        first, second = preset.splits
        splits = {first: _hub_like(name, 20), second: _hub_like(name, 6)}
        dd = datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in splits.items()})
        dd.save_to_disk(str(tmp_path / "hf" / name))
    specs = [{"name": n, "path": f"hf/{n}"} for n in PAPER_TASKS]
    cfg = parse_config({"tasks": specs}, base_dir=tmp_path)
    tasks = {t.name: t for t in load_tasks(cfg)}
    assert list(tasks) == list(PAPER_TASKS)
    for name, task in tasks.items():
        sizes = {s: len(task.rows(s)) for s in ("train", "val", "test")}
        assert sizes == {"train": 18, "val": 2, "test": 6}, name
        assert task.labels == PAPER_TASKS[name].labels and task.template.endswith("Answer:")
        assert {r["label"] for r in task.rows("train")} == set(task.labels), name


def test_story_cloze_without_its_manual_download_says_what_to_do(tmp_path):
    import datasets

    from core.data.sources import load_tasks

    rows = datasets.Dataset.from_list(_hub_like("storycloze", 6))
    datasets.DatasetDict({"train": rows}).save_to_disk(str(tmp_path / "sc"))  # the wrong splits
    cfg = parse_config({"tasks": [{"name": "storycloze", "path": "sc"}]}, base_dir=tmp_path)
    with pytest.raises(DataError, match="no validation, test split.*rocstories"):
        load_tasks(cfg)
