"""The paper's-protocol preset: its tasks are the sample rows relabelled as yes/no questions
(scripts/build_protocol_tasks.py), one shared answer space, the paper's 90/10 split."""

from __future__ import annotations

import json
import sys

from conftest import ROOT, SAMPLE

sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

from build_protocol_tasks import SUITE, build  # noqa: E402

from core.config import load_config  # noqa: E402
from core.data.sources import load_tasks  # noqa: E402

COMMITTED = SAMPLE / "protocol" / "tasks"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_committed_tasks_are_built_from_the_sample_rows(tmp_path):
    written = build(tmp_path / "tasks")
    assert len(written) == 4 * len(SUITE)
    for path in written:
        rel = path.relative_to(tmp_path / "tasks")
        assert (COMMITTED / rel).read_bytes() == path.read_bytes(), rel


def test_every_row_is_a_sample_row_with_its_label_mapped():
    for name, (source, _, yes, _) in SUITE.items():
        src = {s: rows(SAMPLE / "tasks" / source / f"{s}.jsonl") for s in ("train", "test")}
        label_of = {(r["text"], r.get("text_pair")): r["label"] for s in src.values() for r in s}
        mine = {s: rows(COMMITTED / name / f"{s}.jsonl") for s in ("train", "val", "test")}
        assert len(mine["train"]) + len(mine["val"]) == len(src["train"]) == 500
        assert abs(len(mine["val"]) - 50) <= 2, name  # 90/10
        assert len(mine["test"]) == len(src["test"])
        for split, split_rows in mine.items():
            for r in split_rows:
                original = label_of[(r["text"], r.get("text_pair"))]
                assert r["label"] == ("yes" if original in yes else "no"), (name, split)
        train = {(r["text"], r.get("text_pair")) for r in mine["train"]}
        assert not train & {(r["text"], r.get("text_pair")) for r in mine["val"]}


def test_the_preset_loads_with_one_shared_answer_space():
    cfg = load_config(SAMPLE / "protocol.yaml")
    tasks = load_tasks(cfg)
    assert [t.name for t in tasks] == list(SUITE)
    assert {tuple(t.labels.items()) for t in tasks} == {(("no", " No"), ("yes", " Yes"))}
    assert cfg.training.epochs == 10 and cfg.training.patience is None  # the paper's
    for t in tasks:
        assert {s: len(t.rows(s)) for s in ("train", "val")} in (
            {"train": 450, "val": 50},
            {"train": 451, "val": 49},
            {"train": 449, "val": 51},
        ), t.name
        assert "{text}" in t.template and t.template.endswith("Answer:")


def test_the_protocol_bench_smoke_run_is_consistent(tmp_path):
    """bench/protocol.py --smoke: the transfer matrix is the fine-tunes' own numbers, the
    negative pairs are those where a task loses, and the control has the same group sizes."""
    import subprocess

    import numpy as np
    from protocol import negative_pairs, random_grouping, transfer_matrix

    out = tmp_path / "protocol.json"
    proc = subprocess.run(
        [sys.executable, "bench/protocol.py", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    pairs = res["parts"]["pairs"]
    tasks, seeds = pairs["tasks"], pairs["seeds"]
    real = pairs["real"]
    real = {
        "alone": {t: {int(s): m for s, m in v.items()} for t, v in real["alone"].items()},
        "pairs": {k: {int(s): m for s, m in v.items()} for k, v in real["pairs"].items()},
    }
    again = transfer_matrix(real, tasks, seeds, "nll")
    np.testing.assert_allclose(again["mean"], pairs["real_loss_transfer"]["mean"])
    a, b = tasks[0], tasks[1]
    by_hand = np.mean([real["alone"][a][s]["nll"] - real["pairs"][f"{a}+{b}"][s][a]["nll"]
                       for s in seeds])  # fmt: skip
    assert pairs["real_loss_transfer"]["mean"][0][1] == np.float64(by_hand)
    neg = negative_pairs(again["mean"], again["se"], tasks)
    assert neg == pairs["negative_pairs"] and res["negative_pairs"] == len(neg["negative"])
    head = res["parts"]["headline"]
    rec = str(head["recommended"]["m"])
    drawn = head["groups"][head["control"]]  # a new draw at every training seed
    assert set(drawn) == {str(s) for s in head["seeds"]}
    for seed, control in drawn.items():
        assert sorted(map(len, control)) == sorted(map(len, head["groups"][rec]))
        assert random_grouping(head["groups"][rec], int(seed)) == control
    first = head["control"].removesuffix("-per-seed")
    assert head["groups"][first] == random_grouping(head["groups"][rec])
    assert head["samples"][f"s0-m{head['control']}"] == head["samples"][f"s0-m{first}"]  # reused
    assert res["mean_gain"] == head["by_m"][rec]["mean_gain"]
    versus, samples = head["rec_vs_random"], head["samples"]
    if head["control"] in head["m_values"]:  # the recommended m > 1: the control ran
        seeds = versus["seeds"]
        by_task = {t: np.mean([np.subtract(samples[f"s{s}-m{rec}"]["ensemble"][t],
                                           samples[f"s{s}-m{head['control']}"]["ensemble"][t])
                               for s in seeds]) for t in samples[f"s{seeds[0]}-m{rec}"]["ensemble"]}  # fmt: skip
        assert np.isclose(versus["ensemble"]["points"], 100 * np.mean(list(by_task.values())))
        for t, d in by_task.items():
            assert np.isclose(versus["ensemble"]["per_task"][t]["points"], 100 * d), t
    else:
        assert versus is None
    from claims_others import md_headline  # RESULTS.md's section says what the file holds

    text = "\n".join(md_headline(res, head, res["provenance"]["headline"]))
    assert f"{res['mean_gain']:+.1f} points [{head['gain_ci'][0]:+.1f}, " in text
    assert json.dumps(drawn["1"]) in text and "still to run: nothing" in text
    # a second session: the workspace is gone, the results file is not; its runs are kept
    again = subprocess.run(
        [sys.executable, "bench/protocol.py", "--smoke", "--part", "headline", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count(", same groups)") == len(head["plan"])  # all kept, none trained
    assert json.loads(out.read_text())["parts"]["headline"]["samples"] == head["samples"]
    summarized = subprocess.run(
        [sys.executable, "bench/protocol.py", "--summarize", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert summarized.returncode == 0, summarized.stderr[-3000:]
    assert json.loads(out.read_text())["parts"]["headline"] == json.loads(json.dumps(head))
