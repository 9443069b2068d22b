"""Benchmark: gradient-feature extraction vs a LoRA training step vs the per-example loop.

On SmolLM2-135M and real sample rows (yelp and newsgroups train), with LoRA on q,k,v of all layers and
of the top 4 layers. Timing runs the three modes side by side in ONE process, interleaved batch
by batch on the same batches (so machine load hits them alike) and reports ratios; peak memory
is measured in a separate subprocess per mode (RSS sampled every 5 ms, above the RSS after one
warm-up forward, which pages the memory-mapped weights in). Writes bench/results/features.json.

    .venv/bin/python bench/features.py [--batches 2] [--batch-size 16] [--quantization none]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from machine import machine_info  # noqa: E402 (bench/ is on the path of a bench script)

os.environ.setdefault("GROUPTUNE_PROGRESS", "0")

ADAPTERS = {"qkv_all_layers": None, "qkv_top4_layers": 4}
MODES = ("forward", "extract", "train", "reference")
TASKS = ["yelp", "newsgroups"]  # short sentences and long posts (cut to --max-tokens)


def _setup(args, top_layers):
    """(peft_model, projector, batches, snapshot of the fresh adapter)."""
    import torch

    from core.config import parse_config
    from core.data.prompts import encode_split, pad_batch
    from core.data.sources import load_tasks
    from core.gradients.extract import load_extraction_model

    torch.set_flush_denormal(True)
    cfg = parse_config(
        {
            "model": {
                "name": "smollm2-135m",
                "quantization": args.quantization,
                "device": "cpu",
                "threads": args.threads,
            },
            "adapter": {"r": 4, "alpha": 32, "top_layers": top_layers},
            "data": {"root": str(ROOT / "sample_data" / "tasks"), "max_tokens": args.max_tokens},
            "tasks": TASKS,
            "features": {"k": 400, "batch_size": args.batch_size},
        }
    )
    peft_model, tok, projector = load_extraction_model(cfg)
    per_task = -(-args.batches // len(TASKS))  # full batches of each task, interleaved
    by_task = []
    for task in load_tasks(cfg):
        enc = encode_split(tok, task, "train", cfg.data.max_tokens)
        n = per_task * args.batch_size
        rows = sorted(range(n), key=lambda i: len(enc.input_ids[i]))
        chunks = [rows[s : s + args.batch_size] for s in range(0, n, args.batch_size)]
        by_task.append(
            [
                (
                    task.name,
                    pad_batch([enc.input_ids[i] for i in idx], tok.pad_token_id),
                    [enc.input_ids[i] for i in idx],
                    enc.choice_ids,
                    enc.gold[idx],
                )
                for idx in chunks
            ]
        )
    batches = [b for group in zip(*by_task, strict=True) for b in group]
    snapshot = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    return peft_model, projector, batches[: args.batches], snapshot


def _run_mode(mode, peft_model, projector, item, snapshot, optimizer):
    import torch

    from core.gradients.per_example import (
        batch_features,
        prepare_for_extraction,
        reference_example_grads,
    )

    _, batch, ids, choice_ids, gold = item
    if mode == "forward":
        with torch.inference_mode():
            peft_model(**batch, logits_to_keep=1)
    elif mode == "extract":
        batch_features(peft_model, batch, choice_ids, gold, "choices", "train", projector)
    elif mode == "reference":
        ref = reference_example_grads(peft_model, ids, choice_ids, gold, "choices", "train")
        projector.project(torch.as_tensor(ref["g"], dtype=torch.float32))
    else:  # a plain LoRA step on A and B: forward, CE on the gold answer token, backward, AdamW
        peft_model.train()
        for n, p in peft_model.named_parameters():
            p.requires_grad_(n in snapshot)
        logits = peft_model(**batch, logits_to_keep=1).logits[:, -1].float()
        target = torch.as_tensor(choice_ids)[torch.as_tensor(gold)]
        torch.nn.functional.cross_entropy(logits, target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # back to the expansion point for the next extraction
            for n, p in peft_model.named_parameters():
                if n in snapshot:
                    p.copy_(snapshot[n])
        prepare_for_extraction(peft_model)


def _optimizer(peft_model, snapshot):
    import torch

    params = [p for n, p in peft_model.named_parameters() if n in snapshot]
    return torch.optim.AdamW(params, lr=1e-4)


def time_modes(args, top_layers) -> dict:
    """Seconds per row of each mode, interleaved on the same batches after one warm-up round."""
    peft_model, projector, batches, snapshot = _setup(args, top_layers)
    opt = _optimizer(peft_model, snapshot)
    seconds = {}
    for round_ in range(2):  # round 0 warms up on each task's shape (allocator, kernels, hashes)
        for item in batches if round_ else batches[: len(TASKS)]:
            for mode in MODES if round_ else MODES[:3]:
                start = time.perf_counter()
                _run_mode(mode, peft_model, projector, item, snapshot, opt)
                if round_:
                    key = (item[0], mode)
                    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
    out = {"D": projector.D}
    for task in [*dict.fromkeys(item[0] for item in batches), "all"]:
        mine = [item for item in batches if task in ("all", item[0])]
        rows = sum(len(item[2]) for item in mine)
        tokens = sum(int(item[1]["attention_mask"].sum()) for item in mine)
        per_row = {
            m: sum(v for (t, mm), v in seconds.items() if mm == m and task in ("all", t)) / rows
            for m in MODES
        }
        out[task] = {
            "rows": rows,
            "mean_tokens": round(tokens / rows, 1),
            "seconds_per_row": {m: round(v, 5) for m, v in per_row.items()},
            "extract_over_train_step": round(per_row["extract"] / per_row["train"], 3),
            "extract_over_forward": round(per_row["extract"] / per_row["forward"], 3),
            "reference_over_extract": round(per_row["reference"] / per_row["extract"], 3),
        }
    return out


def memory_mode(args, top_layers, mode) -> dict:
    """Peak RSS above the warm model while running `mode` on the largest batch (this process)."""
    import psutil

    proc = psutil.Process()
    peft_model, projector, batches, snapshot = _setup(args, top_layers)
    opt = _optimizer(peft_model, snapshot)
    _run_mode("forward", peft_model, projector, batches[0], snapshot, opt)  # pages weights in
    base = proc.memory_info().rss
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    longest = max(batches, key=lambda item: item[1]["input_ids"].numel())
    _run_mode(mode, peft_model, projector, longest, snapshot, opt)
    stop.set()
    thread.join()
    return {
        "rss_after_warm_forward_mb": round(base / 2**20, 1),
        "peak_delta_mb": round((peak[0] - base) / 2**20, 1),
    }


def _child(args, what: str, top_layers, mode=None) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--top-layers", str(top_layers or 0)]
    cmd += ["--batches", str(args.batches), "--batch-size", str(args.batch_size)]
    cmd += ["--quantization", args.quantization, "--max-tokens", str(args.max_tokens)]
    cmd += ["--threads", str(args.threads)]
    if mode:
        cmd += ["--mode", mode]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=2, help="batches in all, split over the tasks")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--quantization", default="none", choices=["none", "4bit"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier when shared)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "features.json"))
    p.add_argument("--child", choices=["time", "memory"])
    p.add_argument("--top-layers", type=int, default=0)
    p.add_argument("--mode", choices=MODES)
    args = p.parse_args()
    if args.child:
        top = args.top_layers or None
        res = time_modes(args, top) if args.child == "time" else memory_mode(args, top, args.mode)
        print(json.dumps(res))
        return
    start, load_before = time.time(), os.getloadavg()
    results = {}
    for name, top in ADAPTERS.items():
        res = _child(args, "time", top)
        res["memory"] = {m: _child(args, "memory", top, m) for m in MODES}
        results[name] = res
        print(name, json.dumps(res), flush=True)
    report = {
        "command": " ".join([".venv/bin/python", "bench/features.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {
            "model": "smollm2-135m",
            "quantization": args.quantization,
            "dtype": "float32",
            "lora": "r=4 alpha=32 on q,k,v",
            "target": "choices (train rows)",
            "projection": "countsketch k=400",
            "batch_size": args.batch_size,
            "batches": args.batches,
            "max_tokens": args.max_tokens,
            "torch_threads": args.threads,
            "rows": f"first rows of {' + '.join(TASKS)} train, sorted by length",
        },
        "goal": "extract_over_train_step <= 1.5",
        "goal_met": all(
            r[t]["extract_over_train_step"] <= 1.5 for r in results.values() for t in TASKS
        ),
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "wall_seconds": round(time.time() - start, 1),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
