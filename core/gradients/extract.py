"""Per-example gradient features at the base model with a fresh seeded adapter.

The expansion point θ* is the base model plus a LoRA adapter with seeded A and B = 0. Only the
B matrices get gradients (with B = 0, ∂/∂A = 0). For one prompt, with logits l ∈ R^V at the
answer position (the last column of a left-padded batch) and answer-word ids c_1..c_C:

    z_c  = l[c_c]                                  choice logits, (C,)
    lse  = logsumexp_v l_v                         full-vocabulary log-normaliser
    target "choices": log p = z_gold - logsumexp_c z_c      (p over the answer words)
    target "vocab":   log p = z_gold - lse                  (p over the vocabulary, the paper)
    p clamped to [1e-6, 1 - 1e-6];   h = log(p / (1 - p)) = log p - log(1 - p)

Train rows store h and g = Πᵀ ∂h/∂B (k,), and for target "choices" with 3+ answer words also z
and G_c (core.gradients.store.per_choice_train). Val rows store z, lse, h and G_c = Πᵀ ∂z_c/∂B
(C, k), plus Glse = Πᵀ ∂lse/∂B (k,) for target "vocab"; an update w then linearises as
z_c + G_c·w and lse + Glse·w, from which both h (either target) and the predicted answer
argmax_c(z_c + G_c·w) follow without a forward pass.

Answer words of several tokens (core.data.prompts.Answers): z_c is the word's log-probability
given the prompt, summed over its tokens (target "choices") or averaged over them (target
"vocab", the paper's mean-over-tokens), and lse = 0, so every formula above holds unchanged.
Each row is then one sequence per distinct continuation; the hooks add a row's sequences'
gradients.

Fast path: forward hooks on every lora_B keep its input u_t = A x_t (batch, T, r); a tensor hook
on its output receives δ_t = ∂q/∂(lora_B output)_t (batch, T, out) during backward, where q is
the sum over the batch of one per-example quantity. The output of lora_B is multiplied by
`scaling` only afterwards, so the chain rule has already put the scaling into δ and
∂q_e/∂B = Σ_t δ_t u_tᵀ (out, r) for every example e at once (one float32 einsum per layer),
projected block by block without ever building (batch, D). One backward for train rows, C (+1)
backwards over the same graph (retain_graph) for val rows.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from core.data.prompts import Answers, Encoded, encode_split, pad_batch
from core.gradients.projection import Projector, projector_for
from core.models import prefix
from core.models.scoring import answer_logits, choice_scores

EPS = 1e-6
_LOGP_MIN, _LOGP_MAX = math.log(EPS), math.log1p(-EPS)


def gold_log_odds(z, lse, gold, target: str):
    """h (b,) from choice scores z (b, C) and lse (b,) (core.models.scoring.choice_scores)."""
    z_gold = z.gather(1, gold[:, None])[:, 0]
    norm = torch.logsumexp(z, dim=-1) if target == "choices" else lse
    logp = (z_gold - norm).clamp(_LOGP_MIN, _LOGP_MAX)
    return logp - torch.log(-torch.expm1(logp))


def target_quantities(
    logits: torch.Tensor, choice_ids: torch.Tensor, gold: torch.Tensor, target: str
) -> dict[str, torch.Tensor]:
    """z (b, C), lse (b,) and h (b,) from answer-position logits (b, V) of one-token answer
    words, as in the module doc."""
    logits = logits.float()
    z, lse = logits[:, choice_ids], torch.logsumexp(logits, dim=-1)
    return {"z": z, "lse": lse, "h": gold_log_odds(z, lse, gold, target)}


def answer_quantities(logits, answers: Answers, gold, target: str) -> dict[str, torch.Tensor]:
    """z, lse and h from core.models.scoring.answer_logits, for answer words of any length (for
    multi-token words z is each word's log-probability, averaged over its tokens with target
    "vocab" as in the paper, summed with "choices", and lse is 0)."""
    z, lse = choice_scores(logits, answers, mean=target == "vocab")
    return {"z": z, "lse": lse, "h": gold_log_odds(z, lse, gold, target)}


def as_answers(choices) -> Answers:
    """`choices` as Answers; a list of token ids means one-token answer words."""
    return choices if isinstance(choices, Answers) else Answers(tuple((int(c),) for c in choices))


def feature_dims(peft_model) -> list[int]:
    """Sizes of the LoRA-B blocks (out * r each), in lora_b_parameters order; D = their sum."""
    from core.models.adapters import lora_b_parameters

    return [p.numel() for _, p in lora_b_parameters(peft_model)]


def prepare_for_extraction(peft_model) -> None:
    """Eval mode (no dropout); gradients only for the B matrices; no activation checkpointing.

    Also drops the input-embedding "require grad" hook that kbit preparation installs, so
    backward stops below the lowest adapted layer instead of running to the embeddings.
    """
    from core.models.adapters import lora_b_parameters

    peft_model.eval()
    for p in peft_model.parameters():
        p.requires_grad_(False)
    for _, p in lora_b_parameters(peft_model):
        p.requires_grad_(True)
    base = peft_model.get_base_model()
    if getattr(base, "_require_grads_hooks", None) or hasattr(base, "_require_grads_hook"):
        base.disable_input_require_grads()
    # recomputed forwards would fire the capture hooks twice: checkpointing must be off
    on = getattr(base, "is_activation_checkpointing", None)  # transformers 5; 4.x name below
    if on if on is not None else getattr(base, "is_gradient_checkpointing", False):
        off = getattr(base, "activation_checkpointing_disable", None)
        (off or base.gradient_checkpointing_disable)()


class _BGradHooks:
    """Per-example LoRA-B gradients of a per-example quantity, from hooks on every lora_B.

    Inside `with`: every forward stores each lora_B's input; each `grads(q)` runs one backward
    of q.sum() over the retained graph and returns (b, k) projected, or (b, D) without projector.
    """

    def __init__(self, peft_model, projector: Projector | None, mask: torch.Tensor, per: int = 1):
        from core.models.adapters import lora_b_parameters, lora_layers

        self.params = [p for _, p in lora_b_parameters(peft_model)]
        index = {id(p): i for i, p in enumerate(self.params)}
        self.modules = [layer.lora_B["default"] for _, layer in lora_layers(peft_model)]
        self.block = [index[id(m.weight)] for m in self.modules]
        self.projector, self.mask = projector, mask.bool()
        self.per = per  # sequences per example (multi-token answer words): their gradients add
        self.inputs: dict[int, torch.Tensor] = {}
        self.handles = []
        self.acc = None

    def __enter__(self):
        for m, i in zip(self.modules, self.block, strict=True):
            self.handles.append(m.register_forward_hook(self._forward_hook(i)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.inputs.clear()

    def _forward_hook(self, i: int):
        def hook(module, args, out):
            self.inputs[i] = args[0].detach()
            if out.requires_grad:
                out.register_hook(lambda grad: self._backward(i, grad))

        return hook

    def _backward(self, i: int, delta: torch.Tensor) -> None:
        u = self.inputs[i].float()
        keep = self.mask[:, :, None]  # padded positions contribute exactly nothing
        delta = torch.where(keep, delta.float(), 0.0)
        g = torch.einsum("bto,btr->bor", delta, torch.where(keep, u, 0.0)).reshape(len(u), -1)
        if self.per > 1:
            g = g.reshape(len(u) // self.per, self.per, -1).sum(1)
        if self.projector is not None:
            self.acc += self.projector.project_block(i, g)
        else:
            self.acc[i] = g

    def grads(self, q: torch.Tensor, retain_graph: bool) -> torch.Tensor:
        b = q.shape[0]
        if self.projector is not None:
            self.acc = torch.zeros(b, self.projector.k, device=q.device)
        else:
            self.acc = {}
        # grad w.r.t. the B weights only drives the hooks; the summed result is discarded
        torch.autograd.grad(q.sum(), self.params, retain_graph=retain_graph, allow_unused=True)
        if self.projector is not None:
            return self.acc
        blocks = [
            self.acc.get(i, torch.zeros(b, p.numel(), device=q.device))
            for i, p in enumerate(self.params)
        ]
        return torch.cat(blocks, dim=1)


def batch_features(
    peft_model,
    batch: dict,
    choices,
    gold,
    target: str,
    split: str,
    projector: Projector | None = None,
) -> dict[str, torch.Tensor]:
    """Features of one batch from core.models.prefix.model_inputs (left-padded).

    `choices`: the task's Answers (or the token ids of one-token answer words).
    train: {"h": (b,), "g": (b, k)} (+ "z": (b, C), "G": (b, C, k) when
    core.gradients.store.per_choice_train); val: {"z": (b, C), "lse": (b,), "h": (b,), "G": (b, C, k),
    "Glse": (b, k) for target vocab}. Without a projector, k becomes D (unprojected gradients,
    for tests). The model must be prepared (`prepare_for_extraction`).
    """
    from core.gradients.store import per_choice_train

    answers = as_answers(choices)
    device = batch["attention_mask"].device
    gold = torch.as_tensor(gold, device=device)
    per = 1 if answers.single else len(answers.continuations)
    with _BGradHooks(peft_model, projector, batch["attention_mask"], per) as hooks:
        q = answer_quantities(answer_logits(peft_model, batch, answers), answers, gold, target)
        C = len(answers)
        if split == "train" and per_choice_train(C, target):
            G = [hooks.grads(q["z"][:, c], retain_graph=True) for c in range(C)]
            g = hooks.grads(q["h"], retain_graph=False)
            return {"h": q["h"].detach(), "g": g, "z": q["z"].detach(), "G": torch.stack(G, 1)}
        if split == "train":
            return {"h": q["h"].detach(), "g": hooks.grads(q["h"], retain_graph=False)}
        vocab_lse = target == "vocab" and answers.single  # multi-token words: lse is 0
        n_pass = C + vocab_lse
        G = [hooks.grads(q["z"][:, c], retain_graph=c < n_pass - 1) for c in range(C)]
        out = {name: q[name].detach() for name in ("z", "lse", "h")}
        out["G"] = torch.stack(G, dim=1)
        if vocab_lse:
            out["Glse"] = hooks.grads(q["lse"], retain_graph=False)
        elif target == "vocab":
            out["Glse"] = torch.zeros_like(out["G"][:, 0])
        return out


def reference_example_grads(
    peft_model, input_ids: list[list[int]], choices, gold, target: str, split: str = "train"
) -> dict[str, np.ndarray]:
    """Only for testing: the same features, unprojected, by one plain backward per example.

    Batch of one, no padding, no hooks: autograd's own B gradients, flattened in
    lora_b_parameters order; a multi-token answer word is scored by its own forward over the
    prompt and the whole word. Returns the keys of `batch_features` with k = D, float64 numpy.
    """
    from core.gradients.store import per_choice_train
    from core.models.adapters import lora_b_parameters

    answers = as_answers(choices)
    params = [p for _, p in lora_b_parameters(peft_model)]
    device = params[0].device
    rows: dict[str, list] = {}

    def grad(x, retain=True):
        gs = torch.autograd.grad(x, params, retain_graph=retain, allow_unused=True)
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                for g, p in zip(gs, params, strict=True)
            ]
        )

    for ids, y in zip(input_ids, gold, strict=True):
        z, lse = _reference_scores(peft_model, ids, answers, target == "vocab", device)
        h = gold_log_odds(z[None], lse[None], torch.tensor([int(y)], device=device), target)[0]
        got = {"h": h.detach().double()}
        if split == "train":
            got["g"] = grad(h)
        if split == "train" and per_choice_train(len(answers), target):
            got["z"] = z.detach().double()
            got["G"] = torch.stack([grad(z[c]) for c in range(len(answers))])
        elif split != "train":
            got.update(z=z.detach().double(), lse=lse.detach().double())
            got["G"] = torch.stack([grad(z[c]) for c in range(len(answers))])
            if target == "vocab":
                got["Glse"] = grad(lse) if lse.requires_grad else torch.zeros_like(got["G"][0])
        for name, value in got.items():
            rows.setdefault(name, []).append(value.cpu())
    return {name: torch.stack(v).numpy() for name, v in rows.items()}


def _reference_scores(peft_model, ids: list[int], answers: Answers, mean: bool, device):
    """(z (C,), lse ()) of one prompt, each multi-token word by a forward of prompt + word."""
    if answers.single:
        batch = pad_batch([ids], 0, device)
        logits = peft_model(**batch, logits_to_keep=1).logits[0, -1].float()
        return logits[answers.ids], torch.logsumexp(logits, dim=-1)
    scores = []
    for toks in answers.tokens:
        seq = torch.tensor([list(ids) + list(toks)], device=device)
        logp = peft_model(input_ids=seq).logits[0].float().log_softmax(-1)
        picked = torch.stack([logp[len(ids) - 1 + t, tok] for t, tok in enumerate(toks)])
        scores.append(picked.mean() if mean else picked.sum())
    return torch.stack(scores), torch.zeros((), device=device)


# --- the step ---------------------------------------------------------------------------------
def _resolve_tasks(cfg, tasks):
    from core.data.sources import load_tasks

    if tasks is not None and all(not isinstance(t, str) for t in tasks):
        return list(tasks)
    loaded = load_tasks(cfg)
    if tasks is None:
        return loaded
    by_name = {t.name: t for t in loaded}
    unknown = [t for t in tasks if t not in by_name]
    if unknown:
        from core.errors import ConfigError

        raise ConfigError(f"unknown task(s) {unknown}; the config has {sorted(by_name)}")
    return [by_name[t] for t in tasks]


def _extract_split(
    peft_model,
    store,
    enc: Encoded,
    pad_id: int,
    target: str,
    projector,
    batch_size: int,
    bar,
    on_batch,
) -> int:
    """Compute the pending rows of one split, shortest prompts first, one store write a batch.

    Returns (rows, flops, padded tokens, flop method): the FLOPs are counted on one extra pass
    of the first batch with torch's flop counter and scaled by the padded tokens of all batches.
    """
    from core.models.flops import count_call_flops

    pending = store.pending(enc.split)
    order = pending[np.argsort(enc.lengths[pending], kind="stable")] if len(pending) else pending
    device = next(peft_model.parameters()).device
    per_token, tokens, method = 0.0, 0, "none"
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = prefix.model_inputs(peft_model, enc, idx, pad_id, device)

        def compute(batch=batch, idx=idx):
            return batch_features(
                peft_model, batch, enc.answers, enc.gold[idx], target, enc.split, projector
            )

        if start == 0:  # count on a throwaway pass: the counter may change low-order bits
            _, count = count_call_flops(peft_model, compute, batch, backward=True)
            per_token, method = count.per_token, count.method
        out = compute()
        tokens += int(batch["attention_mask"].numel())
        store.write(enc.split, idx, {n: v.detach().cpu().numpy() for n, v in out.items()})
        bar.update(len(idx), message=f"{enc.task} {enc.split}")
        if on_batch is not None:
            on_batch(enc.task, enc.split, idx)
    return len(order), per_token * tokens, tokens, method


def _open_stores(cfg, ws, todo, tok, peft_model, projector) -> list[tuple]:
    from core.gradients.store import FeatureStore, store_key
    from core.models.adapters import adapter_fingerprint

    adapter = {
        k: v for k, v in adapter_fingerprint(cfg.adapter, peft_model).items() if k != "dropout"
    }
    resolved = {"adapter": adapter, "D": projector.D, "dims": projector.dims}
    resolved["projection"] = {"kind": projector.kind, "k": projector.k}  # what "auto" became
    opened = []
    for task in todo:
        encs = {s: encode_split(tok, task, s, cfg.data.max_tokens) for s in ("train", "val")}
        store = FeatureStore.open(
            ws.features_dir(task.name),
            store_key(cfg, task),
            resolved,
            rows={s: len(e) for s, e in encs.items()},
            C=len(encs["train"].answers),
            k=projector.k,
            gold={s: e.gold for s, e in encs.items()},
        )
        opened.append((task, store, encs))
    return opened


def load_extraction_model(cfg):
    """(peft_model, tokenizer, projector): base model + fresh seeded adapter, ready to extract."""
    from core.models.adapters import attach_adapter
    from core.models.loading import load_model

    model, tok = load_model(cfg.model)
    peft_model = attach_adapter(model, cfg.adapter)
    prepare_for_extraction(peft_model)
    f = cfg.features
    projector = projector_for(f, feature_dims(peft_model))
    return peft_model, tok, projector


def extract_features(cfg, ws, tasks=None, *, on_batch=None) -> dict[str, dict]:
    """Compute (or resume) every task's gradient store; fresh stores are skipped.

    `tasks`: Task objects or task names (default: all of the config's). The model is loaded
    once, and only when some task needs work. `on_batch(task, split, rows)` is called after each
    stored batch. Returns {task: {"status_before", "rows_computed", "seconds"}} plus, for tasks
    computed, "flops" (and its "train_flops" and "val_flops" parts), "tokens" (padded) and
    "flops_method".
    """
    from core.gradients.store import store_status
    from core.locks import artifact_lock, lock_path

    tasks = _resolve_tasks(cfg, tasks)
    before = store_status(ws, cfg, tasks)
    result = {
        t.name: {"status_before": before[t.name], "rows_computed": 0, "seconds": 0.0} for t in tasks
    }
    todo = [t for t in tasks if before[t.name] != "fresh"]
    with contextlib.ExitStack() as held:  # one writer per store; in name order: no deadlock
        for t in sorted(todo, key=lambda t: t.name):
            what = f"the gradient store of {t.name}"
            held.enter_context(artifact_lock(lock_path(ws.root, "features", t.name), what))
        now = store_status(ws, cfg, todo)  # another writer may have finished some meanwhile
        _compute(cfg, ws, [t for t in todo if now[t.name] != "fresh"], result, on_batch)
    return result


def _compute(cfg, ws, todo, result: dict, on_batch) -> None:
    from core.progress import track

    if not todo:
        return
    peft_model, tok, projector = load_extraction_model(cfg)
    prefix.attach(peft_model, cfg, ws)
    opened = _open_stores(cfg, ws, todo, tok, peft_model, projector)
    total = sum(len(store.pending(s)) for _, store, _ in opened for s in ("train", "val"))
    bs, target = cfg.features.batch_size, cfg.features.target
    with track(total, "gradient features", unit="row") as bar:
        for task, store, encs in opened:
            start = time.perf_counter()
            parts = [
                _extract_split(
                    peft_model,
                    store,
                    encs[s],
                    tok.pad_token_id,
                    target,
                    projector,
                    bs,
                    bar,
                    on_batch,
                )
                for s in ("train", "val")
            ]
            seconds = time.perf_counter() - start
            store.finish(seconds)
            result[task.name].update(
                rows_computed=sum(p[0] for p in parts),
                seconds=round(seconds, 3),
                flops=int(sum(p[1] for p in parts)),
                train_flops=int(parts[0][1]),  # the paper counts Step 1 on training rows only
                val_flops=int(parts[1][1]),
                tokens=sum(p[2] for p in parts),
                flops_method="+".join(sorted({p[3] for p in parts if p[0]})) or "none",
            )
