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
        [sys.executable, "bench/claims.py", "--smoke", "--workspace", str(ws), "--out", str(out)]
        + ["--seeds", "0", "1", "--extra-seeds", "1"],
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
    from core.stats import paired_gain, paired_sample

    ws, res, _ = smoke
    d = res["parts"]["ensemble"]
    rec = d["recommended"]["m"]
    assert d["seeds"] == [0, 1] and d["complete"] and d["covered"] == d["plan"]
    assert {(r["seed"], r["m"]) for r in d["runs"]} == {(c["seed"], c["m"]) for c in d["plan"]}
    assert [r["seed"] for r in d["runs"] if r["m"] != rec] == [0] * (len(d["m_values"]) - 1)
    acct = read(ws / "accounting.json")["gradients"]
    feats_train = sum(p["train_flops"] for p in acct["parts"].values())
    for run in d["runs"]:
        runs = ws / "runs"
        base = grouptune(runs / f"s{run['seed']}-baseline", "baseline")
        assert base["config"]["training"]["seed"] == run["seed"]
        assert run["flops"]["baseline_training"] == base["accounting"]["flops"]
        mine = runs / f"s{run['seed']}-m{run['m']}"
        groups = [grouptune(mine, f"group-{i}") for i in range(len(run["groups"]))]
        assert [g["tasks"] for g in groups] == run["groups"]
        assert run["flops"]["group_training"] == sum(g["accounting"]["flops"] for g in groups)
        paper = (feats_train + run["flops"]["group_training"] + run["flops"]["boosting"]) / base[
            "accounting"
        ]["flops"]
        assert run["flops_ratio_paper"] == pytest.approx(paper)
        assert run["flops_ratio_full"] > run["flops_ratio_paper"]
        ens = read(mine / "eval" / "ensemble.json")
        assert run["ensemble"] == ens["metrics"] and run["boosting"] == ens["boosting"]
        gain = 100 * (run["ensemble"]["mean"]["accuracy"] - run["baseline"]["mean"]["accuracy"])
        assert run["gain_points"] == pytest.approx(gain)
    samples = [
        paired_sample(
            d["samples"][f"s{s}-m{rec}"]["ensemble"], d["samples"][f"s{s}-m{rec}"]["baseline"]
        )
        for s in d["seeds"]
    ]
    again = paired_gain(samples)
    assert (d["mean_gain"], d["gain_ci"]) == (again["points"], again["ci"])
    assert d["gain_ci"][0] <= d["mean_gain"] <= d["gain_ci"][1]
    assert not (ws / "groupings" / "chosen.json").exists()  # the product's choice is left alone


def test_report_and_resume(smoke):
    ws, res, tmp = smoke
    claims = [v["claim"] for v in res["verdicts"]]
    results = ROOT / "bench" / "results"
    agreement = results / "agreement-claims.json"  # its row: held-out scores (new format)
    scored = agreement.exists() and "scores" in json.loads(agreement.read_text())
    assert claims[0] == "approximation error" and len(claims) == 5 + scored
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
