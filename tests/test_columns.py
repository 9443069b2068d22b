"""Column mapping (core.data.columns) wherever a task is defined: the config's `columns` and `split`,
a task folder's task.yaml, datasets; suggested answer words; and a user's CSV and JSONL run
through `grouptune init`, `gradients` and `affinity` on the tiny model."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import write_sentences_jsonl, write_task, write_tiny_experiment, write_tweets_csv

from core.cli import main
from core.config import TaskSpec, load_config, parse_config
from core.data.columns import guess_columns, suggest_answer_words
from core.data.sources import load_task, load_task_file, load_task_folder, load_tasks
from core.data.tables import Table
from core.errors import DataError

TWEETS = {
    "name": "tweets",
    "path": "tweets.csv",
    "columns": {"text": "tweet", "label": "author"},
    "template": "Tweet: {text}\nAuthor:",
    "labels": {"ann": " one", "bob": " two"},
}
SENTENCES = {
    "name": "sentences",
    "path": "sentences.jsonl",
    "columns": {"text": "sentence", "label": "gold"},
    "labels": {0: " negative", 1: " positive"},  # YAML reads integer keys
}


def _config(root, tasks, **extra):
    path = root / "mine.yaml"
    data = {"name": "mine", "model": {"name": "tiny-llama", "quantization": "none"}}
    path.write_text(yaml.safe_dump({**data, "tasks": tasks, **extra}))
    return load_config(path)


def test_config_maps_a_tweets_csv_and_a_sentence_jsonl(tmp_path, caplog):
    write_tweets_csv(tmp_path / "tweets.csv")
    write_sentences_jsonl(tmp_path / "sentences.jsonl")
    cfg = _config(tmp_path, [TWEETS, SENTENCES])
    assert cfg.tasks[1].labels == {"0": " negative", "1": " positive"}
    tweets, sentences = load_tasks(cfg)
    row = tweets.rows("train")[0]
    assert set(row) == {"text", "label"} and row["label"] in ("ann", "bob")
    assert tweets.render(row) == f"Tweet: {row['text']}\nAuthor:"
    assert sum(len(tweets.rows(s)) for s in ("train", "val", "test")) == 32
    assert tweets.notes == [
        "ignored column(s) 'id', 'date': not mapped to text, text_pair, label or split"
    ]
    assert "tweets.csv (task tweets): ignored column(s) 'id', 'date'" in caplog.text
    assert {r["label"] for r in sentences.rows("train")} == {"0", "1"}
    assert sentences.notes == []
    # the snapshot round-trips the mapping; a task without one is written as before
    again = parse_config(yaml.safe_load(cfg.to_yaml()), base_dir=tmp_path)
    assert again.tasks == cfg.tasks
    plain = parse_config({"tasks": ["a"]}).to_yaml()
    assert "columns" not in plain and "split" not in plain


def test_a_users_files_run_through_gradients_and_affinity(tmp_path, capsys):
    config = write_tiny_experiment(tmp_path)
    write_tweets_csv(tmp_path / "tweets.csv")
    write_sentences_jsonl(tmp_path / "sentences.jsonl")
    data = yaml.safe_load(config.read_text())
    data["tasks"] = [TWEETS, SENTENCES, "topics"]
    config.write_text(yaml.safe_dump(data))
    ws = tmp_path / "ws"

    def cli(*argv):
        with pytest.raises(SystemExit) as exit_info:
            main([*map(str, argv), "--json"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0, out
        return json.loads(out)

    init = cli("init", "--config", config, "--workspace", ws)
    assert set(init["tasks"]) == {"tweets", "sentences", "topics"}
    grads = cli("gradients", "--workspace", ws)
    assert grads["tweets"]["rows_computed"] == 24  # 60 % + 15 % of 32 rows: train + val
    assert grads["sentences"]["rows_computed"] == 24
    aff = cli("affinity", "--workspace", ws)
    assert aff["tasks"] == ["tweets", "sentences", "topics"]


def test_split_column(tmp_path):
    path = tmp_path / "split.csv"
    names = ["train"] * 6 + ["validation"] * 2 + ["TEST"] * 2
    path.write_text(
        "text,label,part\n" + "".join(f"t{i},{'xy'[i % 2]},{s}\n" for i, s in enumerate(names))
    )
    task = load_task_file(path, TaskSpec(name="s", split="part"))
    assert [r["text"] for r in task.rows("val")] == ["t6", "t7"]  # file order, not shuffled
    assert [len(task.rows(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    assert task.notes == []  # the split column is used, not ignored
    path.write_text("text,label,part\na,x,train\nb,y,holdout\n")
    with pytest.raises(DataError, match=r"row 2, field 'part': split 'holdout' is not train"):
        load_task_file(path, TaskSpec(name="s", split="part"))
    path.write_text("text,label,part\na,x,train\nb,y,test\n")
    with pytest.raises(DataError, match=r"field 'part': no val rows"):
        load_task_file(path, TaskSpec(name="s", split="part"))


def test_split_column_only_for_one_file_tasks(tiny_task_root):
    cfg = parse_config(
        {"tasks": [{"name": "alpha", "split": "part"}], "data": {"root": str(tiny_task_root)}}
    )
    with pytest.raises(DataError, match="a split column is for one-file tasks"):
        load_task(cfg.tasks[0], cfg)


def test_a_missing_mapped_column_lists_the_files_columns(tmp_path):
    path = write_tweets_csv(tmp_path / "tweets.csv")
    with pytest.raises(DataError) as err:
        load_task_file(path, TaskSpec(name="t", columns={"text": "tweet", "label": "user"}))
    assert err.value.field == "columns.label"
    assert "missing column(s) ['user']" in str(err.value)
    assert "'id', 'tweet', 'author', 'date'" in str(err.value)


def test_errors_name_the_files_own_column(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("tweet,author\nfine,ann\n  ,bob\n")
    spec = TaskSpec(name="t", columns={"text": "tweet", "label": "author"})
    with pytest.raises(DataError, match=r"row 2, field 'tweet': empty or non-text value"):
        load_task_file(path, spec)


def test_text_pair_mapping(tmp_path):
    path = tmp_path / "nli.jsonl"
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "y": "yn"[i % 2]} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cols = {"text": "premise", "text_pair": "hypothesis", "label": "y"}
    task = load_task_file(path, TaskSpec(name="nli", columns=cols))
    assert "{text_pair}" in task.template and task.rows("train")[0]["text_pair"].startswith("h")
    with pytest.raises(DataError, match=r"missing column\(s\) \['second'\]"):
        load_task_file(path, TaskSpec(name="nli", columns={**cols, "text_pair": "second"}))
    table = Table(list(rows[0]), rows, "nli.jsonl")
    assert guess_columns(table) == {"text": "premise", "text_pair": "hypothesis", "label": "y"}


def test_columns_in_a_task_folder(tmp_path):
    rows = [{"body": r, "stars": "ab"[i % 2]} for i, r in enumerate("abcdef")]
    folder = write_task(
        tmp_path, "mapped", dict.fromkeys(("train", "val", "test"), rows), {"a": " a", "b": " b"}
    )
    meta = yaml.safe_load((folder / "task.yaml").read_text())
    (folder / "task.yaml").write_text(
        yaml.safe_dump({**meta, "columns": {"text": "body", "label": "stars"}})
    )
    task = load_task_folder(folder)
    assert task.rows("train")[0] == {"text": "a", "label": "a"}
    (folder / "task.yaml").write_text(yaml.safe_dump({**meta, "columns": {"txt": "body"}}))
    with pytest.raises(DataError, match=r"task.yaml, field 'columns': invalid column mapping"):
        load_task_folder(folder)


def test_extra_columns_in_a_task_folder_are_a_note(tmp_path):
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "source": "web"} for i in range(6)]
    folder = write_task(
        tmp_path, "extra", dict.fromkeys(("train", "val", "test"), rows), {"a": " a", "b": " b"}
    )
    task = load_task_folder(folder)
    assert task.notes[0].startswith("train.jsonl: ignored column(s) 'source'")


def test_suggested_answer_words():
    assert suggest_answer_words(["0", "1"]) == {"0": " 0", "1": " 1"}
    rows = [{"t": f"r{i}", "label": i % 2, "label_text": ["neg", "pos"][i % 2]} for i in range(6)]
    table = Table(["t", "label", "label_text"], rows, "x")
    assert suggest_answer_words(["0", "1"], table, "label") == {"0": " neg", "1": " pos"}
    # one row per label: any column would fit, so no names are guessed
    assert suggest_answer_words(["0", "1"], Table(["t", "label"], rows[:2], "x"), "label") == {
        "0": " 0",
        "1": " 1",
    }


def test_datasets_folder_with_mapped_columns(tmp_path):
    import datasets

    rows = [{"sentence": f"s{i}", "gold": i % 2, "idx": i} for i in range(30)]
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "gold": datasets.ClassLabel(names=["neg", "pos"]),
            "idx": datasets.Value("int32"),
        }
    )
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    spec = {
        "name": "hf",
        "path": str(tmp_path / "ds"),
        "columns": {"text": "sentence", "label": "gold"},
    }
    cfg = parse_config({"tasks": [spec]}, base_dir=tmp_path)
    task = load_task(cfg.tasks[0], cfg)
    assert task.labels == {"neg": " neg", "pos": " pos"}
    assert task.notes == ["ignored column(s) 'idx': not mapped to text, text_pair, label or split"]
