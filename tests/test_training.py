"""core.train.trainer: learning, exact resume, PEFT loading, refusals and clear errors.

Tiny real models (core.models.loading' tiny-llama / tiny-gpt2, one CPU thread) on two small real task
folders whose prompt ends with the decisive word, so a few steps visibly learn.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import LABELS, make_cfg, make_tasks, rows, write_task
from safetensors.torch import load_file

from core.config import parse_config
from core.data.prompts import Answers, Encoded
from core.errors import DataError, GroupTuneError, StaleError
from core.recipe import epoch_plan
from core.train import loop
from core.train.run import CHECKPOINT_SECONDS, checkpoint_interval
from core.train.trainer import check_train_data, train_adapter
from core.workspace import Workspace

TWO_WORDS = Answers(((5,), (6,)))


def artifacts(ws, name="baseline") -> dict:
    folder = ws.adapter_dir(name)
    record = json.loads((folder / "grouptune.json").read_text())
    return {
        "weights": load_file(str(folder / "adapter_model.safetensors")),
        "metrics": (folder / "metrics.jsonl").read_text(),
        "val": record["val_metrics"],
        "history": record["history"],
        "best_epoch": record["best_epoch"],
    }


def assert_same_run(a: dict, b: dict) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert a["metrics"] == b["metrics"]  # every step's loss, lr, grad norm and every val record
    assert (a["val"], a["history"], a["best_epoch"]) == (b["val"], b["history"], b["best_epoch"])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("training")
    make_tasks(path)
    return path


@pytest.fixture(scope="module")
def reference(root):
    """An uninterrupted 2-epoch run on tiny GPT-2 (which has dropout: RNG must be restored)."""
    ws = Workspace(root / "reference").ensure()
    record = train_adapter(make_cfg(root), ws, "baseline", ["alpha", "beta"], progress=False)
    return ws, record, artifacts(ws)


def _losses(ws, name="baseline") -> list[tuple[int, float]]:
    lines = (ws.adapter_dir(name) / "metrics.jsonl").read_text().splitlines()
    return [(r["epoch"], r["loss"]) for r in map(json.loads, lines) if r["kind"] == "step"]


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_loss_goes_down_lora_and_qlora(root, quantization):
    cfg = make_cfg(root, "tiny-llama", quantization, training={"epochs": 3, "lr": 2e-2})
    ws = Workspace(root / f"learn-{quantization}").ensure()
    record = train_adapter(cfg, ws, "group-0", ["alpha", "beta"], progress=False)
    losses = _losses(ws, "group-0")
    first = np.mean([loss for e, loss in losses if e == 1])
    last = np.mean([loss for e, loss in losses if e == 3])
    assert last < first - 0.05  # the answer-word loss starts near log 2, with A frozen
    assert record["base_model"]["quantization"] == quantization
    assert len(record["history"]) == 3 and 1 <= record["best_epoch"] <= 3
    assert set(record["val_metrics"]) == {"alpha", "beta", "mean"}
    acct = record["accounting"]
    assert acct["flops"] > acct["train_flops"] > 0 and acct["tokens"] > 0
    assert acct["wall_seconds"] > 0 and acct["peak_memory_bytes"] > 0
    group = json.loads(ws.path("accounting.json").read_text())["group_training"]
    assert group["parts"]["group-0"]["flops"] == acct["flops"] == group["flops"]
    files = {p.name for p in ws.adapter_dir("group-0").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "checkpoint"} <= files


def test_early_stopping_ends_the_run_where_the_full_run_stops_improving(root):
    """patience 1 stops at the first epoch without a better mean val NLL: its history is the
    full run's up to that epoch, and it keeps the same best epoch and weights."""
    from core.recipe import should_stop

    def run(patience, where):
        cfg = make_cfg(root, training={"epochs": 6, "lr": 0.05, "patience": patience})
        ws = Workspace(root / where).ensure()
        return train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False), ws

    full, _ = run(None, "no-stop")
    early, ws = run(1, "early-stop")
    vals = [{"nll": h["mean_nll"], "accuracy": h["mean_accuracy"]} for h in full["history"]]
    stop = next(e for e in range(1, 7) if should_stop(vals[:e], 1) or e == 6)
    assert stop < 6, "the test needs a run that stops improving (a large lr)"
    assert early["history"] == full["history"][:stop] and early["epochs_run"] == stop
    assert early["stopped_early"] and not full["stopped_early"]
    assert early["best_epoch"] == full["best_epoch"] and early["steps"] < full["steps"]
    assert early["val_metrics"] == full["val_metrics"]
    steps = [json.loads(r) for r in (ws.adapter_dir("baseline") / "metrics.jsonl").open()]
    assert max(r["epoch"] for r in steps) == stop


def test_epoch_plan_is_task_homogeneous_seeded_and_capped(root):
    train = [
        Encoded("a", "train", [[1]] * 10, np.zeros(10, dtype=np.int64), TWO_WORDS),
        Encoded("b", "train", [[1]] * 5, np.zeros(5, dtype=np.int64), TWO_WORDS),
    ]
    tcfg = make_cfg(root).training.model_copy(update={"batch_size": 4})
    plan = epoch_plan(train, tcfg, 0)
    assert sorted(len(r) for _, r in plan) == [1, 2, 4, 4, 4]  # 10 -> 4,4,2 and 5 -> 4,1
    again = epoch_plan(train, tcfg, 0)
    assert all(
        t1 == t2 and np.array_equal(r1, r2) for (t1, r1), (t2, r2) in zip(plan, again, strict=True)
    )
    other = epoch_plan(train, tcfg, 1)
    assert any(not np.array_equal(r1, r2) for (_, r1), (_, r2) in zip(plan, other, strict=True))
    capped = tcfg.model_copy(update={"max_steps_per_epoch": 2})
    assert len(epoch_plan(train, capped, 0)) == 2


def test_a_mix_trades_rows_between_tasks_and_equal_weights_change_nothing(root):
    """training.mix: the epoch keeps its row count, task t's share ∝ n_t·w_t; equal weights
    give the plan without a mix, draw for draw."""
    from core.recipe import mixed_counts

    train = [
        Encoded("a", "train", [[1]] * 12, np.zeros(12, dtype=np.int64), TWO_WORDS),
        Encoded("b", "train", [[1]] * 6, np.zeros(6, dtype=np.int64), TWO_WORDS),
    ]
    tcfg = make_cfg(root).training.model_copy(update={"batch_size": 4})
    plain = epoch_plan(train, tcfg, 0, ["a", "b"])
    for mix in ({"a": 1.0, "b": 1.0}, {"a": 2.5, "b": 2.5}, {}):
        same = epoch_plan(train, tcfg.model_copy(update={"mix": mix}), 0, ["a", "b"])
        assert [t for t, _ in same] == [t for t, _ in plain]
        assert all(np.array_equal(r1, r2) for (_, r1), (_, r2) in zip(same, plain, strict=True))
    weighted = epoch_plan(train, tcfg.model_copy(update={"mix": {"b": 4.0}}), 0, ["a", "b"])
    rows = {t: np.concatenate([r for u, r in weighted if u == t]) for t in (0, 1)}
    assert len(rows[0]) + len(rows[1]) == 18  # the epoch's rows are fixed
    assert (len(rows[0]), len(rows[1])) == (6, 12)  # shares 12·1 : 6·4
    assert sorted(np.bincount(rows[1], minlength=6)) == [2] * 6  # b's rows cycled evenly
    assert mixed_counts([10, 5, 3], [1, 0, 2]) == [11, 0, 7]  # 18 rows as 10 : 0 : 6
    assert sum(mixed_counts([7, 11, 3], [0.3, 1.7, 2.2])) == 21


def test_equal_mix_weights_train_the_same_adapter(root, reference):
    """Uniform weights are today's recipe: the same run fingerprint, and trained from scratch
    the adapter is bit for bit the reference's."""
    from safetensors.numpy import load_file

    ref_ws, ref_record, _ = reference
    cfg = make_cfg(root, training={"mix": {"alpha": 2.0, "beta": 2.0}})
    ws = Workspace(root / "uniform").ensure()
    rec = train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False)
    assert rec["fingerprint"]["training"] == ref_record["fingerprint"]["training"]
    mine = load_file(str(ws.adapter_dir("baseline") / "adapter_model.safetensors"))
    theirs = load_file(str(ref_ws.adapter_dir("baseline") / "adapter_model.safetensors"))
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    weighted = make_cfg(root, training={"mix": {"beta": 3.0}})
    wws = Workspace(root / "weighted").ensure()
    other = train_adapter(weighted, wws, "baseline", ["alpha", "beta"], progress=False)
    assert other["fingerprint"]["training"]["mix"] == {"alpha": 0.25, "beta": 0.75}
    moved = load_file(str(wws.adapter_dir("baseline") / "adapter_model.safetensors"))
    assert any(not np.array_equal(moved[k], theirs[k]) for k in moved)


def test_extending_epochs_resumes_exactly(root, reference):
    ws = Workspace(root / "extend").ensure()
    train_adapter(make_cfg(root, training={"epochs": 1}), ws, "baseline", ["alpha", "beta"], False)
    state = json.loads((ws.adapter_dir("baseline") / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 1
    train_adapter(make_cfg(root), ws, "baseline", ["alpha", "beta"], progress=False)
    assert_same_run(artifacts(ws), reference[2])


class _Boom:
    """Stands in for answer_loss and raises `error` on the n-th call (a crash mid-epoch)."""

    def __init__(self, n: int, error: BaseException):
        self.n, self.error, self.calls = n, error, 0
        self.real = loop.answer_loss

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.n:
            raise self.error
        return self.real(*args)


def test_crash_mid_epoch_resumes_exactly(root, reference, monkeypatch):
    ws = Workspace(root / "crash").ensure()
    cfg = make_cfg(root)
    monkeypatch.setattr(loop, "answer_loss", _Boom(12, RuntimeError("simulated crash")))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_adapter(cfg, ws, "baseline", ["alpha", "beta"], False, checkpoint_seconds=0)
    monkeypatch.undo()
    state = json.loads((ws.adapter_dir("baseline") / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 1 and state["state"]["batch_in_epoch"] > 0  # mid-epoch
    assert not (ws.adapter_dir("baseline") / "grouptune.json").exists()
    train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False)
    assert_same_run(artifacts(ws), reference[2])


def test_checkpoint_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("GROUPTUNE_CHECKPOINT_S", raising=False)
    assert checkpoint_interval() == CHECKPOINT_SECONDS
    monkeypatch.setenv("GROUPTUNE_CHECKPOINT_S", "0")  # after every step (worker tests)
    assert checkpoint_interval() == 0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("GROUPTUNE_CHECKPOINT_S", bad)
        with pytest.raises(GroupTuneError, match="GROUPTUNE_CHECKPOINT_S"):
            checkpoint_interval()


def test_out_of_memory_is_explained_and_checkpoint_survives(root, reference, monkeypatch):
    ws = Workspace(root / "oom").ensure()
    cfg = make_cfg(root)
    monkeypatch.setattr(loop, "answer_loss", _Boom(12, torch.OutOfMemoryError("no memory")))
    with pytest.raises(GroupTuneError, match=r"out of memory.*batch_size=4.*epoch 1"):
        train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False)
    monkeypatch.undo()
    train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False)
    assert_same_run(artifacts(ws), reference[2])


def test_saved_adapter_loads_with_peft_and_gives_the_same_logits(root, reference):
    from peft import PeftModel

    from core.data.prompts import encode_split
    from core.data.sources import select_tasks
    from core.models.adapters import attach_adapter
    from core.models.loading import load_model
    from core.models.scoring import choice_logits
    from core.train.evaluation import evaluate_model
    from core.train.run import load_adapter_weights

    ws, record, _ = reference
    cfg = make_cfg(root)
    tasks = select_tasks(cfg, ["alpha", "beta"])
    base, tok = load_model(cfg.model)
    loaded = PeftModel.from_pretrained(base, str(ws.adapter_dir("baseline")))
    val = evaluate_model(loaded, tok, tasks, cfg, split="val")
    for task in ("alpha", "beta", "mean"):
        assert val[task]["accuracy"] == record["val_metrics"][task]["accuracy"]
        assert val[task]["nll"] == pytest.approx(record["val_metrics"][task]["nll"], abs=1e-6)
    twin, _ = load_model(cfg.model)
    twin = attach_adapter(twin, cfg.adapter)
    load_adapter_weights(twin, ws.adapter_dir("baseline") / "checkpoint" / "best.safetensors")
    enc = encode_split(tok, tasks[0], "test", cfg.data.max_tokens)
    np.testing.assert_allclose(
        choice_logits(loaded, tok, enc), choice_logits(twin, tok, enc), rtol=0, atol=1e-5
    )


def test_finished_adapter_is_returned_not_retrained(root, reference):
    ws, record, _ = reference
    weights = ws.adapter_dir("baseline") / "adapter_model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = train_adapter(make_cfg(root), ws, "baseline", ["alpha", "beta"], progress=False)
    assert again == json.loads(json.dumps(record)) and weights.stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"adapter": {"r": 8}}, "adapter config"),
        ({"training": {"lr": 5e-3}}, "training"),
        ({"model": {"name": "tiny-llama"}}, "base model"),
    ],
)
def test_work_made_with_other_settings_is_refused(root, reference, change, what):
    ws = reference[0]
    with pytest.raises(StaleError, match=what):
        train_adapter(make_cfg(root, **change), ws, "baseline", ["alpha", "beta"], False)


def test_corrupted_checkpoint_files_are_named(root):
    ws = Workspace(root / "corrupt").ensure()
    one = make_cfg(root, training={"epochs": 1, "max_steps_per_epoch": 2})
    train_adapter(one, ws, "baseline", ["alpha", "beta"], progress=False)
    two = make_cfg(root, training={"epochs": 2, "max_steps_per_epoch": 2})
    ckpt = ws.adapter_dir("baseline") / "checkpoint"
    good = (ckpt / "adapter.safetensors").read_bytes()
    (ckpt / "adapter.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GroupTuneError, match=r"checkpoint/adapter\.safetensors"):
        train_adapter(two, ws, "baseline", ["alpha", "beta"], progress=False)
    (ckpt / "adapter.safetensors").write_bytes(good)
    (ckpt / "state.pt").write_bytes(b"garbage")
    with pytest.raises(GroupTuneError, match=r"checkpoint/state\.pt"):
        train_adapter(two, ws, "baseline", ["alpha", "beta"], progress=False)
    record = train_adapter(two, ws, "baseline", ["alpha", "beta"], False, restart=True)
    assert record["accounting"]["steps"] == 4  # max_steps_per_epoch respected


def test_bad_inputs_raise_clear_errors(root, tmp_path):
    cfg = make_cfg(root)
    ws = Workspace(tmp_path / "ws").ensure()
    with pytest.raises(GroupTuneError, match="at least one task"):
        train_adapter(cfg, ws, "group-0", [], progress=False)
    with pytest.raises(GroupTuneError, match="unknown task"):
        train_adapter(cfg, ws, "group-0", ["alpha", "gamma"], progress=False)
    with pytest.raises(GroupTuneError, match="listed twice"):
        train_adapter(cfg, ws, "group-0", ["alpha", "alpha"], progress=False)
    splits = {"train": rows(6, only="positive"), "val": rows(4), "test": rows(4)}
    write_task(tmp_path / "tasks", "mono", splits, LABELS, template="Review: {text}")
    mono = parse_config(
        {**cfg.model_dump(exclude={"base_dir"}), "tasks": ["mono"]}, base_dir=tmp_path
    )
    with pytest.raises(DataError, match="single label"):
        train_adapter(mono, ws, "group-0", ["mono"], progress=False)
    one_label = Encoded("mono", "train", [[1], [2]], np.zeros(2, dtype=np.int64), TWO_WORDS)
    with pytest.raises(DataError, match="same label"):
        check_train_data("group-0", [one_label])
    empty = Encoded("void", "train", [], np.zeros(0, dtype=np.int64), TWO_WORDS)
    with pytest.raises(DataError, match="no training rows"):
        check_train_data("group-0", [empty])


def test_qlora_gradients_survive_a_validation_pass():
    """bitsandbytes would repack 4-bit weights on an eval pass and cut the backward graph;
    load_model keeps the training layout (core.models.loading.keep_bnb_training_layout)."""
    import torch.nn.functional as F

    from core.config import AdapterConfig, ModelConfig
    from core.data.prompts import pad_batch
    from core.models.adapters import attach_adapter
    from core.models.loading import load_model

    model, tok = load_model(ModelConfig(name="tiny-llama", quantization="4bit", threads=1))
    model = attach_adapter(model, AdapterConfig(dropout=0.0))
    batch = pad_batch([tok.encode("item 3 was good")] * 2, tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    target = torch.tensor(tok.encode(" positive") * 2)
    F.cross_entropy(model(**batch, logits_to_keep=1).logits[:, -1], target).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_qlora_resume_is_exact(root):
    cfg = {"training": {"epochs": 2, "max_steps_per_epoch": 3}}
    full = Workspace(root / "q-full").ensure()
    train_adapter(make_cfg(root, "tiny-llama", "4bit", **cfg), full, "baseline", ["alpha"], False)
    split = Workspace(root / "q-split").ensure()
    one = make_cfg(root, "tiny-llama", "4bit", training={"epochs": 1, "max_steps_per_epoch": 3})
    train_adapter(one, split, "baseline", ["alpha"], progress=False)
    train_adapter(make_cfg(root, "tiny-llama", "4bit", **cfg), split, "baseline", ["alpha"], False)
    assert_same_run(artifacts(split), artifacts(full))


def _a_matrices(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if ".lora_A." in k}


def test_frozen_a_stays_bit_identical_to_the_features_init(root):
    """training.freeze_a (the default): every A equals the seeded init the gradient features
    were taken at, bit for bit, while B moves; with freeze_a off, A moves."""
    from core.models.adapters import attach_adapter, lora_layers
    from core.models.loading import load_model

    cfg = make_cfg(root, "tiny-llama", training={"epochs": 2, "lr": 2e-2})
    assert cfg.training.freeze_a
    model, _ = load_model(cfg.model)
    init = {
        f"{name}.lora_A.weight": layer.lora_A["default"].weight.detach().clone()
        for name, layer in lora_layers(attach_adapter(model, cfg.adapter))
    }
    ws = Workspace(root / "frozen-a").ensure()
    train_adapter(cfg, ws, "group-0", ["alpha", "beta"], progress=False)
    trained = load_file(str(ws.adapter_dir("group-0") / "adapter_model.safetensors"))
    a = _a_matrices(trained)
    assert len(a) == len(init) > 0
    for key, value in a.items():
        assert torch.equal(value, init[key]), key
    assert any(v.abs().max() > 0 for k, v in trained.items() if ".lora_B." in k)

    loose = cfg.model_copy(update={"training": cfg.training.model_copy(update={"freeze_a": False})})
    ws2 = Workspace(root / "trained-a").ensure()
    train_adapter(loose, ws2, "group-0", ["alpha", "beta"], progress=False)
    moved = _a_matrices(load_file(str(ws2.adapter_dir("group-0") / "adapter_model.safetensors")))
    assert any(not torch.equal(v, a[k]) for k, v in moved.items())


def test_choices_loss_is_the_answer_word_cross_entropy(root):
    """training.loss "choices" trains the NLL over the answer words, which is what the
    logged step loss reports: at B = 0 it equals the features' log(1 + exp(-h))."""
    cfg = make_cfg(root, "tiny-llama", training={"epochs": 1, "lr": 1e-9})
    ws = Workspace(root / "choices-loss").ensure()
    train_adapter(cfg, ws, "group-0", ["alpha"], progress=False)
    first = _losses(ws, "group-0")[0][1]
    vocab = cfg.model_copy(update={"training": cfg.training.model_copy(update={"loss": "vocab"})})
    ws2 = Workspace(root / "vocab-loss").ensure()
    train_adapter(vocab, ws2, "group-0", ["alpha"], progress=False)
    assert first < 1.0 < _losses(ws2, "group-0")[0][1]  # 2 choices vs a whole vocabulary


@pytest.mark.parametrize(
    ("model", "quantization", "top_layers"),
    [("tiny-gpt2", "none", None), ("tiny-llama", "4bit", 1)],
)
def test_a_finished_adapter_or_its_twin_needs_no_model_load(
    tmp_path, monkeypatch, model, quantization, top_layers
):
    """The start-up tax: a job with nothing to do decides so from the model's skeleton."""
    import core.models.loading as loading

    make_tasks(tmp_path)
    cfg = make_cfg(tmp_path, model, quantization, adapter={"top_layers": top_layers})
    ws = Workspace(tmp_path / "ws").ensure()
    done = train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_load)
    again = train_adapter(cfg, ws, "baseline", ["alpha", "beta"], progress=False)
    assert again == done  # finished: the skeleton's fingerprint matched the real one
    twin = train_adapter(cfg, ws, "group-0", ["alpha", "beta"], progress=False)
    assert twin["copied_from"] == "baseline" and twin["fingerprint"] == done["fingerprint"]
    other = make_cfg(tmp_path, model, quantization, adapter={"top_layers": top_layers, "r": 2})
    with pytest.raises(AssertionError, match="the model was loaded"):  # a new recipe trains
        train_adapter(other, ws, "group-1", ["alpha", "beta"], progress=False)
