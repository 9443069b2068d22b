"""`grouptune export --bundle`: the trained ensemble as PEFT folders, bundle.json and a loader
that needs only torch, transformers and peft. Loaded in a fresh interpreter where GroupTune
cannot be imported, from a folder it was moved to, it gives `grouptune predict`'s answers and
probabilities, on prompts over the token budget, a two-text task with multi-token answer
words, weights mixing two adapters, a boosting round and the baseline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from conftest import sentiment_rows, write_task
from dashboard import cli

from core.config import parse_config
from core.ensemble import boosting
from core.ensemble.combine import train_groups
from core.ensemble.manifest import load_manifest, save_manifest
from core.train.trainer import train_adapter
from core.workspace import open_workspace

PAIR_LABELS = {"same": " agreeable", "different": " disagreeable"}  # several tokens each
LONG = "The food was great and the staff were lovely, " * 8  # far over max_tokens


def _pair_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        same = (i + offset) % 2 == 0
        claim = f"The team won the game number {i + offset}."
        other = claim if same else f"The president spoke to the party {i + offset}."
        rows.append({"text": claim, "text_pair": other, "label": "same" if same else "different"})
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace with two group adapters, a baseline and one boosting round, its manifest
    set to mix both adapters for `pairs` (so the bundle's weights and steps all matter)."""
    root = tmp_path_factory.mktemp("bundle")
    template = "Claim: {text}\nEvidence: {text_pair}\nSame?"
    splits = {"train": _pair_rows(12), "val": _pair_rows(6, 40), "test": _pair_rows(6, 80)}
    write_task(root / "tasks", "pairs", splits, PAIR_LABELS, template=template)
    senti = {
        "train": sentiment_rows(12),
        "val": sentiment_rows(6, 40),
        "test": sentiment_rows(6, 80),
    }
    write_task(root / "tasks", "reviews", senti, {"negative": " negative", "positive": " positive"})
    cfg = parse_config(
        {
            "name": "bundle",
            "model": {"name": "tiny-llama", "quantization": "none", "threads": 1},
            "tasks": ["pairs", "reviews"],
            "data": {"root": "tasks", "max_tokens": 48},
            "features": {"batch_size": 4},
            "training": {"epochs": 1, "lr": 1e-2, "batch_size": 4},
            "ensemble": {"boosting": 1, "boosting_method": "train"},
        },
        base_dir=root,
    )
    ws = open_workspace(root / "ws", cfg)
    train_groups(cfg, ws, [["pairs"], ["reviews"]], progress=False)
    train_adapter(cfg, ws, "baseline", ["pairs", "reviews"], progress=False)
    boosting.boost(cfg, ws)
    manifest = load_manifest(ws)
    manifest["weights"]["pairs"] = {"group-0": 0.7, "group-1": 0.3}
    manifest["boosting"][0]["step"] = 0.5  # in use whatever the fit found
    save_manifest(ws, manifest)
    return root, ws


def _rows(task: str) -> list[dict]:
    if task == "pairs":
        return [*_pair_rows(3, 200), {"text": LONG, "text_pair": LONG + "again"}]
    return [{"text": "The soup was cold."}, {"text": LONG}, {"text": "Lovely staff, great food."}]


def _standalone_env() -> dict:
    """torch, transformers and peft importable; GroupTune not: site-packages on PYTHONPATH
    with `python -S`, so its editable install's .pth hook never runs."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "PYTHONPATH": sysconfig.get_paths()["purelib"], "HF_HUB_OFFLINE": "1"}


def _standalone(args: list, cwd) -> str:
    out = subprocess.run(
        [sys.executable, "-S", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=_standalone_env(), timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_bundle_reproduces_predict_without_grouptune(trained, tmp_path):
    root, ws = trained
    made = cli("export", "--workspace", ws.root, "--bundle", root / "out", "--include-model")
    assert made["adapters"] == ["group-0", "group-1", "boost-0", "baseline"]
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(root / "out", moved)  # relocatable: paths inside are relative
    outside = tmp_path / "cwd"
    outside.mkdir()
    probe = (
        "import importlib.util as u; print(u.find_spec('core'), u.find_spec('peft') is not None)"
    )
    assert _standalone(["-c", probe], outside).split() == ["None", "True"]
    spec = json.loads((moved / "bundle.json").read_text())
    assert spec["version"] == 1 and spec["model"]["path"] == "base_model"
    assert spec["tasks"]["pairs"]["weights"] == {"group-0": 0.7, "group-1": 0.3}
    assert spec["tasks"]["pairs"]["boosting"][0]["step"] == 0.5
    assert min(len(t) for t in spec["tasks"]["pairs"]["answer_tokens"]) > 1
    for task in ("pairs", "reviews"):
        rows = _rows(task)
        (tmp_path / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        expected = cli(
            "predict", "--workspace", ws.root, "--task", task, "--explain",
            "--input", tmp_path / f"{task}.jsonl",
        )["rows"]  # fmt: skip
        got = json.loads(
            _standalone(
                [
                    moved / "predict.py",
                    "--task",
                    task,
                    "--input",
                    tmp_path / f"{task}.jsonl",
                    "--json",
                ],
                outside,
            )
        )
        assert [g["answer"] for g in got] == [e["answer"] for e in expected]
        assert [g["baseline"] for g in got] == [e["baseline"]["answer"] for e in expected]
        for g, e in zip(got, expected, strict=True):
            assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-6)
    assert any(len(e["prompt"]) < len(LONG) for e in expected)  # the budget cut a prompt


def test_export_never_replaces_a_folder_that_is_not_a_bundle(trained, tmp_path):
    _, ws = trained
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    out = subprocess.run(
        [sys.executable, "-m", "core.cli", "export", "-w", ws.root, "--bundle", tmp_path / "mine"],
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    assert out.returncode == 2 and "is not a bundle" in out.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
