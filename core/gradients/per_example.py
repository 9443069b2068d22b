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

The stores, the model and the loop over tasks are core.gradients.extract.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from core.data.prompts import Answers, pad_batch
from core.gradients.projection import Projector
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
        z, lse = reference_scores(peft_model, ids, answers, target == "vocab", device)
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


def reference_scores(peft_model, ids: list[int], answers: Answers, mean: bool, device):
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
