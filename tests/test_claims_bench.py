"""bench/claims.py --smoke end to end: every part is there and agrees with the workspace files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_smoke(ws: Path, out: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "bench/claims.py", "--smoke", "--workspace", str(ws), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return time.perf_counter() - start


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def grouptune(ws: Path, adapter: str) -> dict:
    return read(ws / "adapters" / adapter / "grouptune.json")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("claims")
    ws = tmp / "ws"
    run_smoke(ws, tmp / "claims.json")
    return ws, read(tmp / "claims.json"), tmp


def test_estimation_part_is_validation_json(smoke):
    ws, res, _ = smoke
    a, validation = res["parts"]["estimation"], read(ws / "validation.json")
    assert a["summary"]["mean_loss_rel_error"] == validation["summary"]["mean_loss_rel_error"]
    assert len(a["rows"]) == len(validation["rows"]) > 0
    assert [s["adapter"] for s in a["subsets"]] == [s["adapter"] for s in validation["subsets"]]


def test_speedup_costs_are_the_accounting_records(smoke):
    ws, res, _ = smoke
    b, validation = res["parts"]["speedup"], read(ws / "validation.json")
    records = [grouptune(ws, s["adapter"])["accounting"] for s in validation["subsets"]]
    assert b["finetune"]["flops"] == sum(r["flops"] for r in records) > 0
    assert b["finetune"]["wall_seconds"] == pytest.approx(sum(r["wall_seconds"] for r in records))
    gradients = read(ws / "accounting.json")["gradients"]
    assert b["features"]["flops"] == gradients["flops"] > 0
    first = b["variants"][0]
    assert first["flops_ratio"] == pytest.approx(b["finetune"]["flops"] / gradients["flops"])


def test_approximation_covers_every_subset_adapter(smoke):
    ws, res, _ = smoke
    c, validation = res["parts"]["approximation"], read(ws / "validation.json")
    assert [r["subset"] for r in c["rows"]] == [s["subset"] for s in validation["subsets"]]
    for row, update in zip(c["rows"], validation["subsets"], strict=True):
        assert row["weight_change"] == update["weight_change"]
        assert row["val_rows"] > 0 and row["delta_B_norm"] > 0
        for kind in ("full", "B_only"):
            assert math.isfinite(row[kind]["paper_rse_mean"])
            assert math.isfinite(row[kind]["change_rel_err"])


def test_ensemble_runs_match_adapters_and_test_metrics(smoke):
    ws, res, _ = smoke
    d = res["parts"]["ensemble"]
    assert {r["seed"] for r in d["runs"]} == {0, 1}
    assert len(d["runs"]) == 2 * len(d["m_values"]) and len(d["m_values"]) == 2
    cached = read(ws / "claims" / "test_metrics.json")
    feats = read(ws / "accounting.json")["gradients"]["flops"]
    for run in d["runs"]:
        base = grouptune(ws, f"claims-s{run['seed']}-baseline")
        assert base["config"]["training"]["seed"] == run["seed"]
        assert run["baseline_training"]["flops"] == base["accounting"]["flops"]
        groups = sum(grouptune(ws, a)["accounting"]["flops"] for a in run["adapters"])
        assert run["flops_ratio"] == pytest.approx((feats + groups) / base["accounting"]["flops"])
        own = [
            cached[a]["metrics"][t]["accuracy"]
            for a in run["adapters"]
            for t in cached[a]["metrics"]
        ]
        assert run["ensemble"]["mean"]["accuracy"] == pytest.approx(sum(own) / len(own))
        gain = 100 * (run["ensemble"]["mean"]["accuracy"] - run["baseline"]["mean"]["accuracy"])
        assert run["gain_points"] == pytest.approx(gain)
    assert not (ws / "groupings" / "chosen.json").exists()  # the product's choice is left alone


def test_report_and_resume(smoke):
    ws, res, tmp = smoke
    claims = [v["claim"] for v in res["verdicts"]]
    results = ROOT / "bench" / "results"
    assert claims[0] == "approximation error" and len(claims) == 5 + (
        (results / "agreement-claims.json").exists()
    )
    paper = results / "approx_paper.json"
    if paper.exists():  # the paper's protocol, measured by bench/approx_paper.py
        worst = max(read(paper)["summary"]["paper_protocol"].values())
    else:
        worst = res["parts"]["approximation"]["summary"]["full"]["paper_rse_mean"]
    assert res["verdicts"][0]["holds"] == (worst < 0.01)
    md = (tmp / "RESULTS.md").read_text()
    assert md.startswith("# GroupTune") and "| claim | paper | GroupTune |" in md
    run_smoke(ws, tmp / "again.json")  # every piece is reused: same numbers
    again = read(tmp / "again.json")
    for part in ("estimation", "approximation", "ensemble"):
        assert again["parts"][part] == res["parts"][part]
    assert again["parts"]["speedup"]["finetune"] == res["parts"]["speedup"]["finetune"]
