"""core.data.tables and the user-file loaders: one real malformed file per test, written in tmp_path;
each error names the file, the row where the problem starts, and what to do."""

from __future__ import annotations

import json

import pytest

from core.config import TaskSpec
from core.data.sources import load_task_file
from core.data.tables import parse_table, read_table
from core.errors import DataError


def _csv(n: int = 20, sep: str = ",") -> str:
    return f"text{sep}label\n" + "".join(f"row {i}{sep}{'ab'[i % 2]}\n" for i in range(n))


def _load(path):
    return load_task_file(path, TaskSpec(name="mine"))


def test_unclosed_quote_names_the_row_where_it_opened(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('text,label\nfine,a\nalso fine,b\n"never closed,a\nnext,b\nlast,a\n')
    with pytest.raises(DataError) as err:
        _load(path)
    assert err.value.row == 3 and err.value.file == path  # the third data row, line 4
    assert "never closed" in str(err.value) and "line 4" in str(err.value)
    assert 'double each quote that is part of the text ("")' in str(err.value)


def test_quote_closed_before_other_text_names_its_row(tmp_path):
    path = tmp_path / "glued.csv"
    path.write_text('text,label\nok,a\n"runs on,b\nover rows,a\n"then text,b\nlast,a\n')
    with pytest.raises(
        DataError, match=r"glued.csv, row 2: a quote .* opened on line 3 is closed on line 5"
    ) as err:
        _load(path)
    assert err.value.row == 2


def test_multiline_quoted_cell_is_fine(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('text,label\n"line one\nline two",a\n' + _csv(19).split("\n", 1)[1])
    assert read_table(path).rows[0]["text"] == "line one\nline two"


def test_semicolon_separated_csv_says_so(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text(_csv(sep=";"))
    with pytest.raises(DataError) as err:
        _load(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "looks semicolon-separated" in msg
    assert "save it comma-separated" in msg


def test_tab_separated_csv_says_rename_to_tsv(tmp_path):
    path = tmp_path / "tabs.csv"
    path.write_text(_csv(sep="\t"))
    with pytest.raises(DataError, match=r"tabs.csv.*looks tab-separated.*rename it to .tsv"):
        _load(path)


def test_tsv_is_tab_separated_and_a_comma_tsv_is_named(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("text\tlabel\nhello, world\ta\n" + _csv(19, "\t").split("\n", 1)[1])
    task = _load(good)
    assert "hello, world" in [r["text"] for s in task.splits.values() for r in s]
    bad = tmp_path / "commas.tsv"
    bad.write_text(_csv())
    with pytest.raises(DataError, match=r"commas.tsv.*looks comma-separated.*rename it to .csv"):
        _load(bad)


def test_utf8_bom_is_dropped(tmp_path):
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(_csv(), encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + _csv().encode())
    assert read_table(bom).columns == ["text", "label"]  # not '\ufefftext'
    assert _load(bom).content_hash() == _load(plain).content_hash()
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf" + b'{"text": "hi", "label": "a"}\n{"text": "yo", "label": "b"}\n'
    )
    assert read_table(jsonl).columns == ["text", "label"]


def test_empty_label_names_row_and_column(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("text,label\nfine,a\nno label here,\nok,b\n")
    with pytest.raises(DataError, match=r"gaps.csv, row 2, field 'label': empty label"):
        _load(path)


def test_null_label_in_jsonl_is_empty_not_none(tmp_path):
    path = tmp_path / "nulls.jsonl"
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": None}, {"text": "c", "label": "y"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"nulls.jsonl, row 2, field 'label': empty label"):
        _load(path)


def test_label_seen_once_in_train_is_a_note(tmp_path, caplog):
    """A note, not an error: long-tail labels are real data and the task still runs."""
    path = tmp_path / "rare.csv"
    path.write_text(_csv(20) + "a lonely row,c\n")
    task = _load(path)
    assert "c" in task.labels and [r["label"] for r in task.rows("train")].count("c") == 1
    (note,) = task.notes
    assert note.startswith("label 'c' has one train row")
    assert "label 'c' has one train row" in caplog.text and "rare.csv" in caplog.text


def test_repeated_column_name(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("text,label,text\na,b,c\n")
    with pytest.raises(DataError, match=r"twice.csv: column name 'text' appears twice"):
        _load(path)


def test_more_cells_than_the_header_says_to_quote(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text("text,label\nhello, world,a\n")
    with pytest.raises(DataError, match=r"row 1: more cells than columns .* quote cells"):
        _load(path)


def test_json_object_per_row(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n["text", "b"]\n')
    with pytest.raises(DataError, match=r"list.jsonl, row 2: expected a JSON object"):
        _load(path)


def test_json_array_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": f"t{i}", "label": "xy"[i % 2]} for i in range(10)]))
    assert len(read_table(path).rows) == 10


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    table = pa.table({"sentence": [f"s{i}" for i in range(20)], "gold": [i % 2 for i in range(20)]})
    pq.write_table(table, path)
    spec = TaskSpec(name="pq", columns={"text": "sentence", "label": "gold"})
    task = load_task_file(path, spec)
    assert task.labels == {"0": " 0", "1": " 1"}  # integer labels: suggested words
    assert sum(len(v) for v in task.splits.values()) == 20
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file"):
        read_table(bad)


def test_unsupported_type():
    with pytest.raises(DataError, match=r"unsupported file type .xlsx"):
        parse_table(b"", "sheet.xlsx")
