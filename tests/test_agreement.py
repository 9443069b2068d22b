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


def _seeds_table(rng, n_subsets=10, tasks=("a", "b", "c"), seeds=(0, 1, 2)):
    rows = []
    for s in range(n_subsets):
        for t in tasks:
            if rng.random() < 0.3:
                continue  # a subset holds some tasks only
            truth = rng.normal()
            row = {"subset": f"s{s}", "task": t, "predicted_loss": truth + rng.normal(0, 0.5),
                   "predicted_accuracy": rng.random()}  # fmt: skip
            for seed in seeds:
                row[f"loss@{seed}"] = truth + rng.normal(0, 0.8)
                row[f"accuracy@{seed}"] = round(rng.random(), 1)  # ties, as real accuracies have
            rows.append(row)
    df = pd.DataFrame(rows)
    for metric in ("loss", "accuracy"):
        df[f"real_{metric}"] = df[[f"{metric}@{s}" for s in seeds]].mean(axis=1)
    return df


def test_the_vectorised_resampler_equals_measuring_relabelled_copies():
    """Resampler (the fast path) against the slow reference: a resample's counts per subset
    give exactly the measures of the table with each drawn copy relabelled, as
    bootstrap_interval builds it."""
    from core.validate.agreement import Resampler, _with_leave_outs, fair_specs

    rng = np.random.default_rng(3)
    df = _with_leave_outs(_seeds_table(rng))
    specs = fair_specs(df)
    res = Resampler(df)
    point = res.measure(specs)
    assert point["order_agreement_vs_mean"] == order_agreement(df, "predicted_loss", "real_loss")
    assert point["within_task_corr_loss_vs_mean"] == pytest.approx(
        within_task_corr(df, "predicted_loss", "real_loss"), rel=1e-12
    )
    folds = [within_task_corr(df, f"loss@{s}", f"others@{s}_loss") for s in (0, 1, 2)]
    assert point["ceiling_corr_loss_loo"] == pytest.approx(np.mean(folds), rel=1e-12)
    w = res.counts(12, seed=5)
    for b in range(len(w)):
        per_subset = {df["subset"][i]: int(w[b, i]) for i in range(len(df))}
        copies = pd.concat(
            [df[df["subset"] == s].assign(subset=f"{s}#{k}")
             for s, c in per_subset.items() for k in range(c)], ignore_index=True,
        )  # fmt: skip
        fast = res._values(specs, w[b : b + 1])
        slow_order = order_agreement(copies, "predicted_loss", "real_loss")
        assert fast["order_agreement_vs_mean"][0] == pytest.approx(slow_order, rel=1e-12)
        slow_corr = within_task_corr(copies, "loss@1", "others@1_loss")
        assert res._values({"c": ("corr", (("loss@1", "others@1_loss"),))}, w[b : b + 1])["c"][
            0
        ] == pytest.approx(slow_corr, rel=1e-12)


def test_fair_agreement_intervals_bracket_and_match_the_slow_bootstrap():
    from core.validate.agreement import bootstrap_interval, fair_agreement

    rng = np.random.default_rng(4)
    df = _seeds_table(rng, n_subsets=16)
    out = fair_agreement(df, n_boot=400)
    lo, hi = out["order_agreement_vs_mean_ci"]
    assert lo <= out["order_agreement_vs_mean"] <= hi
    slow = bootstrap_interval(df, lambda d: order_agreement(d, "predicted_loss", "real_loss"), 400)
    assert abs(lo - slow[0]) < 0.08 and abs(hi - slow[1]) < 0.08  # same bootstrap, other draws
    assert out["seeds"] == 3 and out["pairs"] > 0
    assert out["ceiling_order_agreement_loo"] is not None
