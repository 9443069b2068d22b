"""core.models.flops: the flop counter against the analytic count, 4-bit handling, accounting.json."""

from __future__ import annotations

import pytest
import torch

from core.accounting import Accounting, stage_entry
from core.config import AdapterConfig, ModelConfig
from core.data.prompts import pad_batch
from core.errors import GroupTuneError
from core.models import flops
from core.models.adapters import attach_adapter
from core.models.flops import (
    analytic_batch_flops,
    analytic_flops,
    count_flops,
    count_parameters,
    measure_flops,
    padded_tokens,
)
from core.models.loading import load_model
from core.workspace import Workspace

# The analytic count ignores norms, rotary/softmax arithmetic and flash-style recomputation:
# it should land within 15% of the counter's matmul + attention count.
TOLERANCE = 0.15
TEXTS = [
    "Review: the food was great and the staff were good, I would go there again\nSentiment:",
    "Review: bad service\nSentiment:",
    "Review: the movie was the best one this year\nSentiment:",
]


def _adapted(name: str, quantization: str = "none"):
    model, tok = load_model(ModelConfig(name=name, quantization=quantization, threads=1))
    model = attach_adapter(model, AdapterConfig(r=4))
    model.train()
    batch = pad_batch([tok.encode(t) for t in TEXTS], tok.pad_token_id)
    return model, batch


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_counter_matches_analytic_and_backward_is_about_twice_forward(name):
    model, batch = _adapted(name)
    forward = measure_flops(model, batch, backward=False)
    both = measure_flops(model, batch, backward=True)
    assert forward == pytest.approx(analytic_batch_flops(model, batch, False), rel=TOLERANCE)
    assert both == pytest.approx(analytic_batch_flops(model, batch, True), rel=TOLERANCE)
    # frozen base: backward computes activation gradients only, ~1x forward (not 2x)
    assert 1.7 < both / forward < 2.3


def test_attention_is_counted_on_cpu():
    """torch registers no CPU sdpa formula; ours adds exactly QKᵀ and AV: 4·L·d·W² per row."""
    from torch.utils.flop_counter import FlopCounterMode

    model, tok = load_model(ModelConfig(name="tiny-llama", quantization="none", threads=1))
    batch = pad_batch([tok.encode("good " * 40)] * 2, tok.pad_token_id)
    with torch.no_grad(), FlopCounterMode(display=False) as raw:
        model(**batch, logits_to_keep=1)
    rows, width = batch["input_ids"].shape
    cfg = model.config
    attention = 4 * cfg.num_hidden_layers * cfg.hidden_size * width * width * rows
    assert measure_flops(model, batch, backward=False) - raw.get_total_flops() == attention


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_4bit_counts_like_its_full_precision_twin(name):
    fp_model, batch = _adapted(name)
    q_model, _ = _adapted(name, "4bit")
    assert any(type(p).__name__ == "Params4bit" for p in q_model.parameters())
    assert count_parameters(q_model) == count_parameters(fp_model)
    for backward in (False, True):
        fp, q = count_flops(fp_model, batch, backward), count_flops(q_model, batch, backward)
        assert q.method == "flop_counter+bnb_equivalent" and fp.method == "flop_counter"
        assert q.flops == pytest.approx(fp.flops, rel=0.01)


def test_count_flops_has_no_side_effects():
    model, batch = _adapted("tiny-gpt2")  # GPT-2 has dropout: the RNG must be left alone
    params = [p for p in model.parameters() if p.requires_grad]
    rng = torch.get_rng_state()
    count_flops(model, batch, backward=True)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in params)
    assert model.training


def test_first_count_on_a_4bit_model_leaves_the_rng_alone(monkeypatch):
    """The quantised layers' probe runs once per process: drawing its input from the global
    RNG shifted a resumed run's dropout masks (tests/test_run.py kills and resumes one)."""
    monkeypatch.setattr(flops, "_PROBED", {})  # as in a fresh process
    model, batch = _adapted("tiny-llama", "4bit")
    rng = torch.get_rng_state()
    count_flops(model, batch, backward=True)
    assert flops._PROBED and torch.equal(rng, torch.get_rng_state())


def test_backward_needs_a_trainable_parameter():
    model, tok = load_model(ModelConfig(name="tiny-llama", quantization="none", threads=1))
    model.requires_grad_(False)  # a frozen base, no adapter
    batch = pad_batch([tok.encode("good")], tok.pad_token_id)
    with pytest.raises(GroupTuneError, match="requires grad"):
        count_flops(model, batch, backward=True)


def test_analytic_formula_by_hand():
    # N = 100 (10 in the head), 50 tokens over 5 rows, A = 30, 4 adapter params
    forward = 2 * 90 * 50 + 2 * 10 * 5 + 30
    assert analytic_flops(100, 50, head_params=10, n_rows=5, attention_flops=30) == forward
    both = analytic_flops(100, 50, True, 4, head_params=10, n_rows=5, attention_flops=30)
    assert both == forward + (forward + 30 + 2 * 4 * 50)
    assert analytic_flops(7, 3) == 42  # the plain 2·N·tokens


def test_padded_tokens_follows_length_sorted_batches():
    # sorted lengths 1, 2, 3, 10 in batches of 2: (1, 2) -> 2·2, (3, 10) -> 2·10
    assert padded_tokens([10, 1, 3, 2], 2) == 4 + 20
    assert padded_tokens([5], 8) == 5


def test_accounting_parts_sum_and_round_trip(tmp_path):
    acct = Accounting(Workspace(tmp_path).ensure())
    acct.record("baseline_training", stage_entry(100, 2.0, 10, 5, "m"))
    acct.record("group_training", stage_entry(30, 1.0, 7, 2, "m"), part="group-0")
    acct.record("group_training", stage_entry(50, 2.5, 9, 3, "m"), part="group-1")
    total = acct.record("group_training", stage_entry(40, 1.5, 8, 3, "m"), part="group-1")
    assert total["flops"] == 70 and total["tokens"] == 5 and total["wall_seconds"] == 2.5
    assert total["peak_memory_bytes"] == 8 and set(total["parts"]) == {"group-0", "group-1"}
    again = Accounting(Workspace(tmp_path))
    assert again.stage("group_training") == total
    assert again.stage("baseline_training")["flops"] == 100
    with pytest.raises(GroupTuneError, match="unknown accounting stage"):
        acct.record("training", stage_entry(1, 1, 1, 1, "m"))
