"""The estimate against the real model: an estimated update written into a real adapter (`apply_update`) and that model's actual val loss and accuracy (`evaluate_real`), to check the linear approximation."""

from __future__ import annotations

import numpy as np

from core.errors import GroupTuneError, StaleError


def apply_update(peft_model, delta_flat, params=None) -> None:
    """Add a flat (D,) update (numpy or torch) into the adapter's B matrices, in the order of
    `core.models.adapters.lora_b_parameters`. `params` overrides that list: Parameters or
    (name, Parameter) pairs. D must equal their total size.
    """
    import torch

    if params is None:
        from core.models.adapters import lora_b_parameters

        params = lora_b_parameters(peft_model)
    params = [p[1] if isinstance(p, tuple) else p for p in params]
    delta = torch.as_tensor(delta_flat).reshape(-1)
    total = sum(p.numel() for p in params)
    if delta.numel() != total:
        raise GroupTuneError(f"update has {delta.numel()} entries; the B matrices hold {total}")
    with torch.no_grad():
        for p, piece in zip(params, torch.split(delta, [p.numel() for p in params]), strict=True):
            p.add_(piece.view(p.shape).to(device=p.device, dtype=p.dtype))


def evaluate_real(cfg, ws, task_names: list[str], w) -> dict[str, dict]:
    """Real forward pass at θ* + Π w: per-task val metrics (core.models.scoring.metrics_from_logits).

    The adapter is attached fresh from cfg.adapter (its seed reproduces the expansion point,
    B = 0), the projector is regenerated from cfg.features, and Π w is added to B. The tasks'
    stores in `ws`, when present, must have been made with the same LoRA-B block sizes.
    """
    from core.data.prompts import encode_split
    from core.data.sources import load_tasks
    from core.gradients.projection import projector_for
    from core.models.adapters import attach_adapter, lora_b_parameters
    from core.models.loading import load_model
    from core.models.scoring import choice_logits, metrics_from_logits

    tasks = {t.name: t for t in load_tasks(cfg)}
    unknown = [t for t in task_names if t not in tasks]
    if unknown:
        raise GroupTuneError(f"unknown tasks {unknown}; the config has {sorted(tasks)}")
    model, tok = load_model(cfg.model)
    peft_model = attach_adapter(model, cfg.adapter)
    params = lora_b_parameters(peft_model)
    dims = [p.numel() for _, p in params]
    for name in task_names:
        stored = (ws.read("features", name, "meta.json") or {}).get("resolved", {}).get("dims")
        if stored is not None and list(stored) != dims:
            raise StaleError(f"features of task {name!r} were made with another adapter layout")
    proj = projector_for(cfg.features, dims)
    apply_update(peft_model, proj.lift(np.asarray(w, dtype=np.float64)), params)
    out = {}
    for name in task_names:
        enc = encode_split(tok, tasks[name], "val", cfg.data.max_tokens)
        logits = choice_logits(peft_model, tok, enc, cfg.features.batch_size, desc=f"val {name}")
        out[name] = metrics_from_logits(logits, enc.gold)
    return out
