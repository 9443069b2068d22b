"""core.artifacts: the workspace's top-level JSON documents, named once, read and written with
their keys checked."""

from __future__ import annotations

import ast
import json

import pytest
from conftest import ROOT

from core.artifacts import AFFINITY, ALL, CHOSEN, REPORT, SUBSETS
from core.errors import GroupTuneError
from core.workspace import Workspace

DEMO = ROOT / "sample_data" / "workspaces" / "quick"


@pytest.mark.parametrize("root", ["real", "demo"])
def test_what_the_engine_writes_has_the_keys_readers_rely_on(root, real_ws):
    """The tiny real run and the committed demo hold every document with its keys (the tiny
    workspace was made step by step, not by `grouptune run` nor validated)."""
    ws = Workspace(real_ws if root == "real" else DEMO)
    made = {a.name for a in ALL if a.exists(ws)}
    not_run = {"run.json", "validation.json"} if root == "real" else set()
    expected = {a.name for a in ALL} - not_run
    assert made == expected
    for artifact in ALL:
        if artifact.exists(ws):
            assert set(artifact.keys) <= set(artifact.read(ws))


def test_a_document_without_its_keys_names_the_file_and_the_command(tmp_path):
    ws = Workspace(tmp_path).ensure()
    with pytest.raises(GroupTuneError, match=r"affinity.json is missing: run `grouptune affinity"):
        AFFINITY.need(ws)
    assert AFFINITY.read(ws) is None
    with pytest.raises(GroupTuneError, match=r"would hold no 'affinity'"):
        AFFINITY.write(ws, {"tasks": ["a"]})
    assert not AFFINITY.exists(ws)  # a refused write leaves nothing behind
    (tmp_path / "groupings").mkdir()
    (tmp_path / "groupings" / "chosen.json").write_text(json.dumps({"m": 2}))
    with pytest.raises(GroupTuneError, match=r"chosen.json holds no 'groups'.*grouptune group"):
        CHOSEN.read(ws)
    (tmp_path / "report.json").write_text('{"tasks": [')
    with pytest.raises(GroupTuneError, match=r"report.json is not a JSON document"):
        REPORT.read(ws)
    SUBSETS.write(ws, {"subsets": [["a", "b"]], "settings": {}})
    assert SUBSETS.need(ws)["subsets"] == [["a", "b"]]


def test_no_module_spells_a_documents_path():
    """No call in core/ or pages/ names a document's path (ws.read("affinity.json"), ...): its
    path lives in core/artifacts.py only."""
    paths, found = {a.parts for a in ALL}, []
    for path in [p for folder in ("core", "pages") for p in sorted((ROOT / folder).rglob("*.py"))]:
        if path.name == "artifacts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            words = tuple(a.value for a in node.args if isinstance(a, ast.Constant))
            if words in paths:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
