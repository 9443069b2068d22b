"""The trust module's figures come from the committed agreement bench (no model needed)."""

from __future__ import annotations

import json

from conftest import ROOT

from core.validate.trust import SKETCH_COST, projection_note


def test_sketch_cost_is_the_committed_bench():
    held_out = json.loads((ROOT / "bench/results/agreement-claims.json").read_text())
    variants = held_out["scores"]["held_out"]["variants"]
    for variant, order, corr in SKETCH_COST.values():
        v = variants[variant]
        assert round(v["order_agreement_vs_mean"], 2) == order
        assert round(v["within_task_corr_loss_vs_mean"], 2) == corr


def test_projection_note_names_the_nearest_measured_sketch():
    assert projection_note(None) is None
    assert projection_note({"kind": "identity", "k": 30720}) is None
    assert "71% of pairs" in projection_note({"kind": "countsketch", "k": 400})
    note = projection_note({"kind": "rademacher", "k": 3000})
    assert "rademacher sketch of k = 3000" in note
    assert "k = 3000 was not measured; the nearest is k = 4096" in note and "82%" in note
