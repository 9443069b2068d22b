"""Experiment config: validation errors name the file and field; workspace snapshots round-trip."""

from __future__ import annotations

import pytest
from conftest import SAMPLE

from core.config import load_config, parse_config
from core.data.sources import load_tasks
from core.errors import ConfigError, DataError
from core.io import safe_name, write_json
from core.workspace import Workspace

ESTIMATE_ORDERS = 8  # bench/results/agreement-claims.json "chosen" (the selection part)


def test_defaults_and_task_strings():
    cfg = parse_config({"tasks": ["a", {"name": "b", "path": "b.csv"}]})
    assert cfg.task_names == ["a", "b"]
    assert cfg.model.name == "smollm2-135m"


def test_a_config_without_features_gets_the_validated_defaults():
    """The schema, the presets and the Datasets page make the combination bench/agreement.py
    validated: exact B-gradients where they fit, the replay averaged over batch orders."""
    from core.config import AUTO_SKETCH_K, IDENTITY_MAX_DIMS
    from core.views.datasets import build_config

    cfg = parse_config({"tasks": ["a"]})
    f, e = cfg.features, cfg.estimator
    assert (f.projection, f.k, f.target) == ("auto", None, "choices")
    assert f.resolved(30_720) == ("identity", None)  # SmolLM2-135M, top 8 layers
    assert f.resolved(IDENTITY_MAX_DIMS + 1) == ("countsketch", AUTO_SKETCH_K)
    assert f.resolved(786_432) == ("countsketch", AUTO_SKETCH_K)  # an 8B model, every layer
    assert (e.method, e.orders) == ("replay", ESTIMATE_ORDERS)
    assert (cfg.training.loss, cfg.training.freeze_a) == ("choices", True)
    for preset in ("quick.yaml", "quick_distinct.yaml", "full.yaml"):
        p = load_config(SAMPLE / preset)
        assert (p.features.projection, p.features.k) == (f.projection, f.k), preset
        assert (p.estimator.method, p.estimator.orders) == (e.method, e.orders), preset
    form = {"name": "new", "model": "smollm2-135m", "quantization": "4bit", "max_tokens": 128,
            "k": 0, "projection": "auto", "subsets": 30, "subset_size": 3, "m": 0,
            "epochs": 10, "tasks": ["yelp", "imdb"]}  # fmt: skip
    page = build_config(form, None, {})  # the Datasets page's form with its defaults
    assert (page.features.projection, page.features.k) == (f.projection, f.k)
    assert (page.estimator.method, page.estimator.orders) == (e.method, e.orders)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"tasks": ["a"], "features": {"k": "many"}}, "features.k"),
        ({"tasks": ["a"], "model": {"quantization": "3bit"}}, "model.quantization"),
        ({"tasks": ["a"], "adapter": {"r": 0}}, "adapter.r"),
        ({"tasks": ["a"], "training": {"epochs": 1, "speed": 3}}, "training.speed"),
        ({"tasks": []}, "tasks"),
        ({"tasks": ["a", "a"]}, "duplicate task name 'a'"),
        ({"tasks": ["../escape"]}, "tasks.0.name"),
        ({"tasks": ["a"], "name": "x/y"}, "name"),
    ],
)
def test_bad_fields_are_named(tmp_path, data, field):
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_safe_names():
    assert safe_name("yelp_2-x.v1") == "yelp_2-x.v1"
    for bad in ("..", "../x", "a/b", ".hidden", "", "x" * 65, "a b"):
        with pytest.raises(DataError):
            safe_name(bad)


def test_workspace_snapshot_round_trip(tmp_path):
    cfg = parse_config(
        {"name": "exp", "tasks": ["a"], "data": {"root": "tasks"}}, base_dir=tmp_path
    )
    ws = Workspace(tmp_path / "ws")
    ws.save_config(cfg)
    again = ws.load_config()
    assert again.model_dump(exclude={"base_dir"}) == cfg.model_dump(exclude={"base_dir"})
    assert again.resolve("tasks") == tmp_path.resolve() / "tasks"


def test_workspace_paths_cannot_escape(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(DataError):
        ws.adapter_dir("../../etc")
    with pytest.raises(ValueError):
        ws.path("..", "x")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert target.read_text().strip().endswith("}")  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


@pytest.mark.parametrize("name", ["quick.yaml", "quick_distinct.yaml", "full.yaml"])
def test_shipped_configs_validate(name):
    path = SAMPLE / name
    if not path.exists():
        pytest.skip("sample configs not built yet")
    cfg = load_config(path)
    names = [t.name for t in cfg.tasks]
    if name == "full.yaml":  # every sample task
        assert sorted(names) == sorted(p.name for p in (SAMPLE / "tasks").iterdir() if p.is_dir())
    elif name == "quick.yaml":  # a scaled-down member of the paper's protocol: one answer space
        protocol = load_config(SAMPLE / "protocol.yaml")
        assert set(names) < set(protocol.task_names)
        assert cfg.resolve(cfg.data.root) == protocol.resolve(protocol.data.root)
        assert {tuple(sorted(t.answer_words)) for t in load_tasks(cfg)} == {(" No", " Yes")}
    else:
        assert names == ["yelp", "amazon", "imdb", "snli", "spam", "newsgroups"]
    assert cfg.training.patience and cfg.ensemble.weights == "fit"  # the recipe the docs describe


def test_a_workspace_snapshot_loads_as_a_config_file(tmp_path):
    """`grouptune run <ws>/config.yaml` resolves paths where the original config did."""
    cfg = parse_config({"tasks": ["a"], "data": {"root": "tasks"}}, base_dir=tmp_path)
    ws = Workspace(tmp_path / "ws")
    ws.save_config(cfg)
    again = load_config(ws.config_path)
    assert again.resolve("tasks") == tmp_path.resolve() / "tasks"


def test_replay_needs_the_features_target_to_be_the_training_loss():
    """The replay trains on the features' own target: a mismatch is refused with both fields
    named, and the paper's argmin (which has no training loss) accepts it."""
    with pytest.raises(ConfigError, match=r"features.target \('vocab'\).*training.loss"):
        parse_config({"tasks": ["a"], "features": {"target": "vocab"}})
    ok = parse_config(
        {"tasks": ["a"], "features": {"target": "vocab"}, "training": {"loss": "vocab"}}
    )
    assert ok.estimator.method == "replay"
    argmin = {"tasks": ["a"], "features": {"target": "vocab"}, "estimator": {"method": "argmin"}}
    assert parse_config(argmin).training.loss == "choices"
