"""Run a GroupTune ensemble bundle with torch, transformers and peft only (no GroupTune).

`grouptune export --bundle DIR` copies this file into DIR as predict.py, beside bundle.json and
the adapters (PEFT folders). From a terminal:

    python DIR/predict.py --task yelp_positive "The soup was cold."
    python DIR/predict.py --task yelp_positive --input rows.jsonl --json    # rows: {"text": ...}

or from Python, with DIR on sys.path: `from predict import Bundle;
Bundle(DIR).predict("yelp_positive", [{"text": "The soup was cold."}])`.

The scoring rules are GroupTune's: the prompt is the task's template with the text(s) cut to
`max_tokens` tokens; a choice's score is its answer word's logit at the last prompt position
when every answer word is one token, else the sum of the log-probabilities of its tokens; the
ensemble's scores are sum_k w_k * s_k over the group adapters plus sum_r step_r * (s_r - s_base)
over the boosting rounds; the probabilities are their softmax.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

FORMAT, VERSION = "grouptune-bundle", 1


class Bundle:
    """`load_model=False`: the tokenizer only, for `prompt_ids` (a client of a LoRA server)."""

    def __init__(self, folder: str | Path, device: str | None = None, load_model: bool = True):
        self.folder = Path(folder)
        self.spec = json.loads((self.folder / "bundle.json").read_text(encoding="utf-8"))
        if self.spec.get("format") != FORMAT or self.spec.get("version") != VERSION:
            raise ValueError(f"{self.folder}: not a {FORMAT} version {VERSION}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        m = self.spec["model"]
        source = self.folder / m["path"] if (self.folder / m["path"]).is_dir() else m["path"]
        self.tokenizer = AutoTokenizer.from_pretrained(source, revision=m.get("revision"))
        self.model = self._load(source, m) if load_model else None

    def _load(self, source, m: dict):
        dtype = getattr(torch, m["dtype"])
        kwargs = {"dtype": dtype, "revision": m.get("revision")}
        if m["quantization"] != "none":  # QLoRA's base: bitsandbytes NF4 (or int8), as trained
            four = m["quantization"] == "4bit"
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=four,
                load_in_8bit=not four,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            kwargs["device_map"] = {"": self.device}
        base = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        if m["quantization"] == "none":
            base = base.to(self.device)
        for layer in base.modules():  # GroupTune keeps bitsandbytes' 4-bit CPU layout fixed
            if hasattr(layer, "support_avx512bf16_for_cpu"):
                layer.support_avx512bf16_for_cpu = False
        model = None
        for name, rel in self.spec["adapters"].items():
            if model is None:
                model = PeftModel.from_pretrained(base, str(self.folder / rel), adapter_name=name)
            else:
                model.load_adapter(str(self.folder / rel), adapter_name=name)
        return model.eval()

    # --- prompts -------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, task: str, row: dict) -> list[int]:
        """The rendered prompt's token ids; over the budget, the text fields (never the
        template) are cut to fit, half each when there are two."""
        template, limit = self.spec["tasks"][task]["template"], self.spec["max_tokens"]

        def render(fields: dict) -> str:
            fields = {k: fields.get(k) or "" for k in ("text", "text_pair")}
            return template.format(**fields)

        ids = self._ids(render(row))
        if len(ids) <= limit:
            return ids
        budget = limit - len(self._ids(render({})))
        if budget < self.spec["min_text_tokens"]:
            raise ValueError(f"task {task}: the template alone is over {limit} tokens")
        pair = bool(row.get("text_pair"))
        for _ in range(4):  # re-tokenising a cut string can shift a token or two: shrink, retry
            share = budget // 2 if pair else budget
            cut = {"text": self._cut(row["text"], share)}
            if pair:
                cut["text_pair"] = self._cut(row["text_pair"], budget - share)
            ids = self._ids(render(cut))
            if len(ids) <= limit:
                return ids
            budget -= len(ids) - limit
        return ids[:limit]

    def _cut(self, text: str, n: int) -> str:
        ids = self._ids(text)
        return text if len(ids) <= n else self.tokenizer.decode(ids[: max(n, 0)])

    # --- scores --------------------------------------------------------------------------------
    @torch.inference_mode()
    def scores(self, prompts: list[list[int]], answers: list[list[int]], adapter: str | None):
        """(rows, choices) float32 scores with one adapter active (None: the base model)."""
        conts = list(dict.fromkeys(tuple(a[:-1]) for a in answers))  # shared continuations
        width = max(len(a) for a in answers)
        out = torch.zeros(len(prompts), len(answers))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # little padding
        size = self.spec["batch_size"]
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            seqs = [prompts[i] + list(c) for i in rows for c in conts]
            logits = self._forward(seqs, width, adapter).float()  # (rows*conts, width, vocab)
            if width == 1:
                z = logits[:, -1, [a[0] for a in answers]]
            else:
                logp = logits.log_softmax(-1).reshape(len(rows), len(conts), width, -1)
                z = torch.stack([self._word(logp, a, conts, width) for a in answers], dim=1)
            out[rows] = z.cpu()
        return out

    @staticmethod
    def _word(logp, word: list[int], conts: list, width: int):
        """Summed log-probability of a word's tokens: the logits at the last len(word)
        positions of the prompt followed by its continuation."""
        seq, n = conts.index(tuple(word[:-1])), len(word)
        picked = logp[:, seq, width - n :].gather(
            -1, torch.tensor(word).expand(len(logp), n)[..., None]
        )
        return picked[..., 0].sum(-1)

    def _forward(self, seqs: list[list[int]], width: int, adapter: str | None):
        """Left-padded (answer position last), with each row's own positions."""
        pad = self.spec["pad_token_id"]
        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, longest - len(s) :], mask[i, longest - len(s) :] = torch.tensor(s), 1
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": (mask.cumsum(1) - 1).clamp(min=0),
        }
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if adapter is None:
            with self.model.disable_adapter():
                return self.model(**batch, logits_to_keep=width).logits
        self.model.set_adapter(adapter)
        return self.model(**batch, logits_to_keep=width).logits

    # --- the ensemble --------------------------------------------------------------------------
    def predict(self, task: str, rows: list[dict]) -> list[dict]:
        """Per row: "answer" (a label) and "probabilities" {label: p}, and "baseline" (the
        single adapter's answer) when the bundle has it."""
        t = self.spec["tasks"][task]
        prompts = [self.prompt_ids(task, r) for r in rows]
        memo: dict = {}

        def s(adapter):  # each adapter's pass once, as float64
            if adapter not in memo:
                memo[adapter] = self.scores(prompts, t["answer_tokens"], adapter).double()
            return memo[adapter]

        z = sum(w * s(a) for a, w in t["weights"].items() if w > 0)
        for b in t["boosting"]:
            z = z + b["step"] * (s(b["adapter"]) - s(None))
        labels = list(t["labels"])
        out = [_answer(labels, z[i]) for i in range(len(rows))]
        if t["baseline"]:
            for i, p in enumerate(s("baseline")):
                out[i]["baseline"] = _answer(labels, p)["answer"]
        return out


def _answer(labels: list[str], z) -> dict:
    e = (z - z.max()).exp()
    p = e / e.sum()
    return {
        "answer": labels[int(p.argmax())],
        "probabilities": dict(zip(labels, p.tolist(), strict=True)),
    }


def _read_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl or .csv file with columns text (and text_pair)."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Answer inputs with a GroupTune bundle.")
    ap.add_argument("texts", nargs="*", help="Text(s) to answer.")
    ap.add_argument("--bundle", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--task", required=True, help="One of the tasks in bundle.json.")
    ap.add_argument("--text-pair", action="append", default=[], help="Second text of each TEXT.")
    ap.add_argument("--input", type=Path, help="A .jsonl or .csv file of rows.")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available).")
    ap.add_argument("--json", action="store_true", help="Print the predictions as JSON.")
    args = ap.parse_args(argv)
    rows = _read_rows(args.input) if args.input else [{"text": t} for t in args.texts]
    for row, pair in zip(rows, args.text_pair, strict=False):  # pairs for typed texts only
        row["text_pair"] = pair
    preds = Bundle(args.bundle, args.device).predict(args.task, rows)
    if args.json:
        print(json.dumps(preds, indent=2))
    for i, p in enumerate(preds if not args.json else [], start=1):
        probs = ", ".join(f"{k} {v:.3f}" for k, v in p["probabilities"].items())
        print(f"row {i}: {p['answer']}  ({probs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
