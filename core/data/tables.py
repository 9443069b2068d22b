"""A user's data file as a table: its column names and one dict per row, each problem named.

CSV, TSV, JSONL (a .json file may also hold one JSON array of objects) and Parquet. A UTF-8
byte-order mark is dropped (Excel writes one; it must not become part of the first column's
name). Each problem is a DataError naming the file, the row (1-based, counting the data rows
under the header, as core.data.tasks.check_rows does) and what to do: a file that is not UTF-8, a
quote that never closes (the row where it opened), a .csv that is really ;- or tab-separated,
a row with more cells than the header, a repeated column name.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import DataError

TABLE_TYPES = ("csv", "tsv", "jsonl", "json", "parquet")
DELIMITERS = {"csv": ",", "tsv": "\t"}
_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_BOM = "\ufeff"


@dataclass
class Table:
    """Rows of one file: `rows[i][column]`; `columns` in the file's order."""

    columns: list[str]
    rows: list[dict] = field(default_factory=list)
    source: str = ""


def decode(data: bytes, source) -> str:
    """UTF-8 text without a leading byte-order mark; a clear error for any other encoding."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); save the file as UTF-8",
            file=source,
            row=line,
        ) from None
    return text[1:] if text.startswith(_BOM) else text


def file_type(name: str | Path) -> str:
    return Path(name).suffix.lower().lstrip(".")


def read_table(path: str | Path) -> Table:
    """The table in the file at `path` (its type from the extension)."""
    path = Path(path)
    return parse_table(path.read_bytes(), path.name, source=path)


def parse_table(data: bytes, filename: str, source=None) -> Table:
    """The table in `data`, a file called `filename` (its extension picks the reader)."""
    source = source if source is not None else filename
    kind = file_type(filename)
    if kind == "parquet":
        return _parquet(data, source)
    if kind not in TABLE_TYPES:
        raise DataError(
            f"unsupported file type .{kind}: use .csv, .tsv, .jsonl or .parquet", file=source
        )
    text = decode(data, source)
    if not text.strip():
        raise DataError("file is empty", file=source)
    if kind in DELIMITERS:
        return _delimited(text, DELIMITERS[kind], kind, source)
    if kind == "json" and text.lstrip().startswith("["):
        return _json_array(text, source)
    return _jsonl(text, source)


# --- CSV and TSV -------------------------------------------------------------------------------
def _check_delimiter(header_line: str, delimiter: str, kind: str, source) -> None:
    """A header with none of the file type's delimiter but another one: say which, and how to
    fix it (every task needs at least a text and a label column, so one column is never right)."""
    if delimiter in header_line:
        return
    found = {d: header_line.count(d) for d in _NAMES if d != delimiter and d in header_line}
    if not found:
        return
    other = max(found, key=found.get)
    if other == "\t":
        advice = "rename it to .tsv"
    elif other == "," and kind == "tsv":
        advice = "rename it to .csv"
    else:
        advice = (
            "save it comma-separated (in Excel or LibreOffice: CSV UTF-8, field delimiter ','), "
            "or tab-separated as a .tsv"
        )
    raise DataError(
        f"the header {header_line.strip()!r} has no {_NAMES[delimiter]}s but "
        f"{found[other]} {_NAMES[other]}(s): the file looks {_NAMES[other]}-separated, not "
        f"{_NAMES[delimiter]}-separated; {advice}",
        file=source,
        row=None,
        field="header",
    )


def _quote_error(err: csv.Error, source, row: int | None, line: int, stop: int) -> DataError:
    """An unbalanced quote: where it opened (`row`, file `line`) and where reading stopped."""
    if "end of data" in str(err):
        what = f'a quote (") opened on line {line} is never closed: the cell runs to the end'
    else:
        what = (
            f'a quote (") opened on line {line} is closed on line {stop} with more text after '
            "it: a quote here is probably never closed"
        )
    return DataError(
        f'{what}. Close the quote, or double each quote that is part of the text ("") and '
        "wrap the cell in quotes",
        file=source,
        row=row,
    )


def _header(cells: list[str], source) -> list[str]:
    names = [c.strip() for c in cells]
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(
                f"column name {name!r} appears twice in the header: rename one", file=source
            )
        seen.add(name)
    return names


def _delimited(text: str, delimiter: str, kind: str, source) -> Table:
    first_line = text.lstrip("\r\n").splitlines()[0]
    _check_delimiter(first_line, delimiter, kind, source)
    # strict: text after a closing quote is an error, not silently glued on (an unbalanced
    # quote otherwise swallows the rows after it into one cell)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    columns: list[str] | None = None
    rows: list[dict] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            row = len(rows) + 1 if columns else None
            raise _quote_error(err, source, row, start, reader.line_num) from None
        if not cells:  # a blank line
            continue
        if columns is None:
            columns = _header(cells, source)
            continue
        if len(cells) > len(columns):
            raise DataError(
                f"more cells than columns in the header ({len(cells)} cells, "
                f"{len(columns)} columns); quote cells that contain {_NAMES[delimiter]}s",
                file=source,
                row=len(rows) + 1,
            )
        # missing trailing cells are empty (a spreadsheet drops a row's empty last cells)
        rows.append(dict(zip(columns, cells + [""] * (len(columns) - len(cells)), strict=True)))
    if not rows:
        raise DataError("no data rows under the header", file=source)
    return Table(columns, rows, str(source))


# --- JSON lines, JSON arrays, Parquet ----------------------------------------------------------
def _object(value, source, row: int) -> dict:
    if not isinstance(value, dict):
        raise DataError(
            f"expected a JSON object {{...}} per row, got {type(value).__name__}",
            file=source,
            row=row,
        )
    return value


def _columns_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def _jsonl(text: str, source) -> Table:
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON ({err.msg})", file=source, row=i) from None
        rows.append(_object(value, source, i))
    if not rows:
        raise DataError("file is empty", file=source)
    return Table(_columns_of(rows), rows, str(source))


def _json_array(text: str, source) -> Table:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg}, line {err.lineno})", file=source) from None
    if not isinstance(values, list) or not values:
        raise DataError("expected a non-empty JSON array of objects", file=source)
    rows = [_object(v, source, i) for i, v in enumerate(values, start=1)]
    return Table(_columns_of(rows), rows, str(source))


def _parquet(data: bytes, source) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "reading Parquet needs pyarrow (pip install pyarrow); or save the data as CSV",
            file=source,
        ) from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"not a readable Parquet file ({err})", file=source) from None
    rows = table.to_pylist()
    if not rows:
        raise DataError("no rows", file=source)
    return Table(list(table.column_names), rows, str(source))
