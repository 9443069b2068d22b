"""core.estimate.methods: the estimators by name, one contract, listed by the config's errors,
the pipeline's early check and the Affinity page."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import write_tiny_experiment
from dashboard import open_page
from test_replay import linear_task

from core import pipeline
from core.config import load_config
from core.errors import ConfigError
from core.estimate import fitter
from core.estimate.estimator import fit_arrays, train_arrays
from core.estimate.methods import METHODS, method_class
from core.estimate.replay import expected_replay


def with_estimator(cfg, **update):
    return cfg.model_copy(update={"estimator": cfg.estimator.model_copy(update=update)})


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return load_config(write_tiny_experiment(tmp_path_factory.mktemp("estimators")))


def test_each_estimator_is_the_function_it_names(cfg):
    rng = np.random.default_rng(3)
    feats = [linear_task(rng, 8, 24, 10), linear_task(rng, 8, 16, 12)]
    replay_cfg = with_estimator(cfg, method="replay", orders=3)
    got = fitter.fitter(replay_cfg)(feats).w
    np.testing.assert_array_equal(got, expected_replay(feats, replay_cfg.training, 3).w)
    argmin_cfg = with_estimator(cfg, method="argmin", max_norm=0.5)
    got = fitter.fitter(argmin_cfg)(feats).w
    np.testing.assert_array_equal(got, fit_arrays(*train_arrays(feats), None, 0.5).w)
    # what an estimate depends on: the replay's recipe, the argmin's trust region
    assert fitter.settings(replay_cfg)["training"]["lr"] == cfg.training.lr
    assert fitter.settings(argmin_cfg) == {"method": "argmin", "reg": None, "max_norm": 0.5}


def test_an_unknown_estimator_fails_before_any_work(cfg, tmp_path):
    from core.workspace import Workspace

    typo = with_estimator(cfg, method="replai")
    with pytest.raises(ConfigError, match=r"estimator.method 'replai' .* replay, argmin"):
        pipeline.check_methods(typo)
    ws = Workspace(tmp_path / "ws").ensure()
    with pytest.raises(ConfigError, match="replai"):
        pipeline.affinity(typo, ws)
    assert not (tmp_path / "ws" / "affinity.json").exists()
    with pytest.raises(ConfigError, match="replai"):
        pipeline.run(typo, ws)
    assert not (tmp_path / "ws" / "jobs.db").exists()  # nothing was queued


def test_a_new_estimator_is_one_class_and_one_entry(cfg, monkeypatch):
    """The registry's promise: a class with the contract is used by the estimate and listed by
    the page, with no other change."""

    class Zero:
        name = "zero"
        summary = "no update at all (the base model's own predictions)"

        @staticmethod
        def fitter(cfg):
            reference = METHODS["argmin"].fitter(cfg)
            return lambda features: dataclasses.replace(
                reference(features), w=np.zeros(features[0].k)
            )

        @staticmethod
        def settings(cfg):
            return {"method": "zero"}

    monkeypatch.setitem(METHODS, "zero", Zero)
    zero = with_estimator(cfg, method="zero")
    pipeline.check_methods(zero)
    assert method_class("zero") is Zero
    rng = np.random.default_rng(0)
    assert not fitter.fitter(zero)([linear_task(rng, 4, 8, 4)]).w.any()
    assert fitter.settings(zero) == {"method": "zero"}


def test_the_affinity_page_lists_the_registry(real_ws, monkeypatch):
    at = open_page(real_ws, "affinity", monkeypatch)
    assert at.selectbox(key="af_method").options == list(METHODS)
    caption = " ".join(c.value for c in at.caption)
    assert all(c.summary in caption for c in METHODS.values())
