"""FLOPs, wall time and peak memory: measured on a real batch, checked analytically, recorded.

Counting. `measure_flops` runs one real batch under `torch.utils.flop_counter.FlopCounterMode`
(matmuls and attention, 1 multiply-add = 2 FLOPs) and patches two blind spots honestly:
  * CPU attention: torch registers no formula for `_scaled_dot_product_flash_attention_for_cpu`
    (forward or backward), so without help attention is silently missed on CPU. We register
    torch's own sdpa formulas for those ops.
  * bitsandbytes 4-bit/8-bit layers: their forward runs a custom kernel the counter cannot see
    (their backward dequantises and is counted). Each quantised layer type is probed once; the
    part the counter missed is added as the equivalent full-precision matmul, 2·in·out per row,
    and the method is recorded as "flop_counter+bnb_equivalent".
Stage totals scale a measured per-token count by the padded token count of the stage
(`per_token × tokens`); padding positions are computed, so they are counted.

Analytic cross-check (`analytic_flops`), frozen base + trainable adapter, N matmul parameters
(embeddings excluded: a lookup is not a matmul), H of them in the LM head:
  forward   F = 2·(N − H)·tokens + 2·H·rows + A        (logits_to_keep=1: head once per row)
  backward  B = 2·(N − H)·tokens + 2·H·rows + 2·A      (activation gradients, frozen weights)
              + 2·N_adapter·tokens                      (adapter weight gradients, small)
with A = 4·L·d·W²·rows the attention score and value products (L layers, d = heads·head_dim,
W padded width). So a training step ≈ 2× a forward pass, not the 3× of full fine-tuning.

Recording. `Accounting(ws)` keeps accounting.json: one entry per stage
{"flops", "wall_seconds", "peak_memory_bytes", "tokens", "method", ...}; stages with parts
(group_training: one part per group adapter) also hold "parts" and the sums over them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import GroupTuneError

# --- measuring ------------------------------------------------------------------------------


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kw):
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


def _sdpa_cpu_mapping() -> dict:
    """torch's sdpa flop formulas, attached to the CPU flash-attention ops it leaves uncounted."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_forward
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_backward
    return mapping


def _counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping())


def quantized_linears(model: nn.Module) -> list[nn.Module]:
    """The bitsandbytes Linear4bit / Linear8bitLt layers of a model (not peft's wrappers)."""
    return [
        m
        for m in model.modules()
        if type(m).__module__.startswith("bitsandbytes") and hasattr(m, "in_features")
    ]


_PROBED: dict[tuple, tuple[float, float]] = {}


def _uncounted_share(layer: nn.Module) -> tuple[float, float]:
    """(forward, backward) share of a quantised layer's matmul the flop counter misses, 0 or 1.

    Probed once per layer type, device and dtype on the layer itself with a 2-row input.
    """
    weight = layer.weight
    dtype = getattr(getattr(weight, "quant_state", None), "dtype", None) or torch.float32
    dtype = getattr(layer, "compute_dtype", None) or dtype
    key = (type(layer), weight.device, dtype)
    if key not in _PROBED:
        expected = 2 * 2 * layer.in_features * layer.out_features
        # callers may be inside inference_mode (scoring): the probe needs a backward graph.
        # Its own generator: the probe runs once per process, so a draw from the global RNG
        # would shift the dropout masks of a resumed training run against an uninterrupted one
        gen = torch.Generator(device=weight.device).manual_seed(0)
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.randn(2, layer.in_features, device=weight.device, dtype=dtype, generator=gen)
            x.requires_grad_(True)
            with _counter() as fwd:
                y = layer(x)
            with _counter() as bwd:
                y.float().sum().backward()
        _PROBED[key] = (
            float(fwd.get_total_flops() < expected / 2),
            float(bwd.get_total_flops() < expected / 2),
        )
    return _PROBED[key]


def _equivalent_hooks(model: nn.Module, backward: bool, tally: list[int]) -> list:
    """Hooks adding the fp-equivalent matmul FLOPs the counter misses in quantised layers."""
    handles = []
    for layer in quantized_linears(model):
        fwd_missing, bwd_missing = _uncounted_share(layer)
        if not fwd_missing and not (backward and bwd_missing):
            continue

        def hook(mod, args, _out, fwd_missing=fwd_missing, bwd_missing=bwd_missing):
            x = args[0]
            per_pass = 2 * (x.numel() // mod.in_features) * mod.in_features * mod.out_features
            # the input gradient is computed only when something below needs it
            needs_grad = backward and x.requires_grad
            tally[0] += int(per_pass * (fwd_missing + (bwd_missing if needs_grad else 0)))

        handles.append(layer.register_forward_hook(hook))
    return handles


def _default_loss(model, batch: dict) -> torch.Tensor:
    return model(**batch, logits_to_keep=1).logits[:, -1].float().logsumexp(-1).sum()


@dataclass
class FlopCount:
    flops: int
    method: str  # "flop_counter" or "flop_counter+bnb_equivalent"
    tokens: int  # padded token positions of the batch (rows × width)
    rows: int

    @property
    def per_token(self) -> float:
        return self.flops / max(self.tokens, 1)


def count_flops(
    model: nn.Module,
    batch: dict,
    backward: bool,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
) -> FlopCount:
    """FLOPs of one forward (and backward) pass on `batch` (a dict from core.data.prompts.pad_batch).

    Side-effect free: gradients, RNG state (dropout) and train/eval mode are left as they were.
    `loss_fn(model, batch) -> scalar` is what backward differentiates (default: logsumexp of
    the last position's logits). Backward needs a parameter that requires grad (an adapter).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if backward and not params:
        raise GroupTuneError("cannot count backward FLOPs: no parameter requires grad")
    saved = [p.grad for p in params]
    tally = [0]
    handles = _equivalent_hooks(model, backward, tally)
    try:
        with torch.random.fork_rng(devices=_cuda_devices()), _counter() as counter:
            if backward:
                (loss_fn or _default_loss)(model, batch).backward()
            else:
                with torch.no_grad():
                    (loss_fn or _default_loss)(model, batch)
    finally:
        for h in handles:
            h.remove()
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    rows, width = batch["attention_mask"].shape
    method = "flop_counter+bnb_equivalent" if tally[0] else "flop_counter"
    return FlopCount(int(counter.get_total_flops() + tally[0]), method, rows * width, rows)


def count_call_flops(model: nn.Module, fn: Callable[[], object], batch: dict, backward: bool):
    """(result of fn(), FlopCount) for any computation on `batch`, e.g. a feature extraction
    with several backward passes. fn runs for real: its gradients and outputs are kept."""
    tally = [0]
    handles = _equivalent_hooks(model, backward, tally)
    try:
        with _counter() as counter:
            out = fn()
    finally:
        for h in handles:
            h.remove()
    rows, width = batch["attention_mask"].shape
    method = "flop_counter+bnb_equivalent" if tally[0] else "flop_counter"
    return out, FlopCount(int(counter.get_total_flops() + tally[0]), method, rows * width, rows)


def measure_flops(model: nn.Module, batch: dict, backward: bool) -> int:
    """FLOPs of one real forward (+ backward if `backward`) pass on `batch`. See `count_flops`."""
    return count_flops(model, batch, backward).flops


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


# --- analytic count ---------------------------------------------------------------------------


def analytic_flops(
    n_params: int,
    n_tokens: int,
    backward: bool = False,
    adapter_params: int = 0,
    *,
    head_params: int = 0,
    n_rows: int | None = None,
    attention_flops: int = 0,
) -> int:
    """Analytic FLOPs of one pass over `n_tokens` positions (formula in the module docstring).

    n_params: matmul parameters N (no embeddings; adapter included), head_params: H, the LM
    head's share, computed for `n_rows` positions (None: every token, as without
    logits_to_keep), attention_flops: A of the forward pass. Returns F, or F + B if backward.
    """
    rows = n_tokens if n_rows is None else n_rows
    forward = 2 * (n_params - head_params) * n_tokens + 2 * head_params * rows + attention_flops
    if not backward:
        return int(forward)
    grads = forward + attention_flops + 2 * adapter_params * n_tokens
    return int(forward + grads)


def flop_profile(model: nn.Module) -> dict:
    """What `analytic_flops` needs from a model: matmul params, head params, layers, width.

    4-bit weights are counted at their true size (core.models.flops.count_parameters).
    """

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    embeds = [m for m in base.modules() if isinstance(m, nn.Embedding)]
    embed_numel = sum(m.weight.numel() for m in embeds)
    head = base.get_output_embeddings()
    head_params = head.weight.numel() if head is not None else 0
    tied = head is not None and any(head.weight is m.weight for m in embeds)
    total = count_parameters(model)
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    return {
        "n_params": total - embed_numel + (head_params if tied else 0),
        "head_params": head_params,
        "adapter_params": count_parameters(model, trainable_only=True),
        "n_layers": getattr(cfg, "num_hidden_layers", None) or cfg.n_layer,
        "attn_width": n_heads * head_dim,
    }


def analytic_batch_flops(model: nn.Module, batch: dict, backward: bool) -> int:
    """`analytic_flops` for one left-padded batch with logits_to_keep=1."""
    p = flop_profile(model)
    rows, width = batch["attention_mask"].shape
    attention = 4 * p["n_layers"] * p["attn_width"] * width * width * rows
    return analytic_flops(
        p["n_params"],
        rows * width,
        backward,
        p["adapter_params"] if backward else 0,
        head_params=p["head_params"],
        n_rows=rows,
        attention_flops=attention,
    )


def padded_tokens(lengths, batch_size: int) -> int:
    """Token positions computed when scoring rows of these lengths in length-sorted batches
    (core.data.prompts.batches, as core.models.scoring.choice_logits does)."""
    from core.data.prompts import batches

    lengths = list(lengths)
    return sum(
        len(idx) * max(lengths[i] for i in idx)
        for idx in batches(len(lengths), batch_size, lengths)
    )


# --- time and memory --------------------------------------------------------------------------


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters as in the unquantized model (shared tensors counted once).

    bitsandbytes 4-bit weights are packed two per byte, so their `numel()` is half the true
    count; their `quant_state.shape` holds the original shape and is used instead.
    """
    total = 0
    for p in model.parameters():
        if trainable_only and not p.requires_grad:
            continue
        qs = getattr(p, "quant_state", None)
        shape = getattr(qs, "shape", None)
        total += int(torch.Size(shape).numel()) if shape is not None else p.numel()
    return total
