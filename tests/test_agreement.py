"""core.validate.agreement: within-task measures on hand-made tables whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.validate.agreement import agreement, order_agreement, per_task, within_task_corr


def table(pred, real, tasks=("a", "a", "a", "b", "b", "b")):
    return pd.DataFrame(
        {
            "subset": [f"s{i}" for i in range(len(tasks))],
            "task": list(tasks),
            "predicted_loss": pred,
            "real_loss": real,
            "predicted_accuracy": [0.5] * len(tasks),
            "real_accuracy": [0.5] * len(tasks),
            "base_loss": [1.0] * len(tasks),
        }
    )


def test_levels_between_tasks_do_not_count():
    """Task b sits 1.0 above task a in both: an overall correlation would be near 1, but
    within each task the prediction runs backwards, and the measures say so."""
    df = table([0.1, 0.2, 0.3, 1.1, 1.2, 1.3], [0.3, 0.2, 0.1, 1.3, 1.2, 1.1])
    assert df["predicted_loss"].corr(df["real_loss"]) > 0.9
    assert within_task_corr(df, "predicted_loss", "real_loss") == pytest.approx(-1.0)
    assert order_agreement(df, "predicted_loss", "real_loss") == 0.0


def test_order_agreement_counts_pairs_within_a_task():
    # task a: pairs (0,1) agree, (0,2) agree, (1,2) disagree; task b: a tie in the prediction
    # counts 1/2, a tie in reality is left out
    df = table([0.1, 0.3, 0.2, 0.5, 0.5, 0.7], [0.1, 0.2, 0.3, 0.4, 0.6, 0.6])
    # a: 2 of 3; b: (3,4) tie in pred -> 0.5, (3,5) agree, (4,5) real tie -> skipped
    assert order_agreement(df, "predicted_loss", "real_loss") == pytest.approx((2 + 1.5) / 5)
    rows = per_task(df)
    assert rows["a"]["order_agreement"] == pytest.approx(2 / 3) and rows["b"]["n"] == 3


def test_drop_and_paper_errors():
    df = table([0.8] * 6, [0.6] * 6)  # predicted drop 0.2, real drop 0.4
    out = agreement(df)
    assert out["drop_rel_error"] == pytest.approx(0.5)
    assert out["paper_rel_error"] == pytest.approx(0.2 / 0.6)
    assert out["within_task_corr_loss"] is None  # no spread: nothing to say
    assert out["n_pairs"] == 0 and out["order_agreement"] is None


def test_bootstrap_interval_brackets_the_value_and_narrows_with_data():
    from core.validate.agreement import bootstrap_interval

    rng = np.random.default_rng(0)

    def noisy(n_subsets):
        rows = []
        for s in range(n_subsets):
            for t in ("a", "b"):
                real = rng.normal()
                rows.append({"subset": f"s{s}", "task": t, "real_loss": real,
                             "predicted_loss": real + rng.normal(0, 0.7)})  # fmt: skip
        return pd.DataFrame(rows)

    def measure(d):
        return order_agreement(d, "predicted_loss", "real_loss")

    small, large = noisy(8), noisy(64)
    lo, hi = bootstrap_interval(small, measure, n_boot=300)
    assert lo <= measure(small) <= hi
    lo2, hi2 = bootstrap_interval(large, measure, n_boot=300)
    assert hi2 - lo2 < hi - lo and lo2 > 0.5  # more subsets: a tighter interval, above chance
    same = table([0.1, 0.2, 0.3, 1.1, 1.2, 1.3], [0.1, 0.2, 0.3, 1.1, 1.2, 1.3])
    assert bootstrap_interval(same, lambda d: order_agreement(d, "predicted_loss", "real_loss"),
                              n_boot=50) == [1.0, 1.0]  # fmt: skip
