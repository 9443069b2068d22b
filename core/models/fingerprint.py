"""What identifies a base model's weights, so stale features and adapters are never reused:
the resolved files' hashes, a Hub commit, the compute dtype and the quantisation.

Torch-free, so the dashboard computes the same fingerprint as the engine: the one part that
needs torch (what `dtype: auto` resolves to on this machine's GPU, if any) is asked of torch
in-process when the engine has it loaded, else once per process in a child interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.io import read_json

if TYPE_CHECKING:
    from core.config import ModelConfig

from core.models.registry import TINY_VERSION, model_source


def model_fingerprint(model_cfg: ModelConfig) -> dict:
    """What identifies the loaded weights, for caches to detect staleness. No downloads.

    Holds the name, revision, where the weights come from (`registry:<name>` for a provisioned
    model, `builtin:<name>@v<version>`, a local folder's resolved path or `hub:<id>`), the
    quantization, the resolved compute dtype, and a weights signature when known (the GGUF
    sha256 of a provisioned model, or config hash and weight sizes of a local folder). A
    provisioned model is named, not located: its cache folder differs between machines (another
    HOME or GROUPTUNE_CACHE) while the weights, and so everything made from them, are the same.
    """
    fp: dict[str, Any] = {
        "name": model_cfg.name,
        "revision": model_cfg.revision,
        "path": None,
        "quantization": model_cfg.quantization,
        "dtype": compute_dtype(model_cfg.dtype, model_cfg.device),
        "weights": None,
    }
    src = model_source(model_cfg.name)
    if src.kind == "builtin":
        fp["path"] = f"builtin:{src.name}@v{TINY_VERSION}"
    elif src.kind == "registry":
        fp["path"] = f"registry:{src.name}"
        with contextlib.suppress(OSError, ValueError):
            fp["weights"] = read_json(src.folder / "provenance.json").get("gguf_sha256")
    elif src.kind == "local":
        fp["path"] = str(src.folder)
        fp["weights"] = _folder_signature(src.folder)
    else:
        fp["path"] = f"hub:{model_cfg.name}"
        commit = hub_commit(model_cfg.name, model_cfg.revision)
        fp["weights"] = f"commit:{commit}" if commit else None
    return fp


def same_model(saved: dict | None, now: dict) -> bool:
    """Whether a stored fingerprint names the weights `now` does. Records made before provisioned
    models were named (their cache folder's absolute path under `.../models/<name>`) count as
    the same model when the weights' sha256 agrees, so older workspaces stay usable."""
    if not saved:
        return False
    path = str(saved.get("path") or "")
    if now.get("path") == f"registry:{now.get('name')}" and saved.get("weights"):
        if Path(path).parts[-2:] == ("models", str(now.get("name"))):
            saved = {**saved, "path": now["path"]}
    return saved == now


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub model resolves to, from the local Hub cache (refs/<revision>, which
    every online load updates); no network. A 40-hex revision is its own commit. So a store or
    adapter made from one commit reads stale once the repository has moved on upstream."""
    import re

    rev = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / rev
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _folder_signature(folder: Path) -> str:
    """Hash of config.json's bytes plus the names, sizes and modification times of the weight
    files: cheap, and a file rewritten in place (same size, new weights) changes it."""
    h = hashlib.sha256()
    cfg = folder / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def compute_dtype(dtype: str, device: str = "auto") -> str:
    """The compute dtype a config resolves to on this machine, by name ("float32", ...)."""
    if dtype not in (None, "auto"):
        return dtype
    if "torch" in sys.modules:  # the engine: ask directly
        from core.models.device import pick_device, pick_dtype

        return str(pick_dtype("auto", pick_device(device))).removeprefix("torch.")
    return _probe_auto_dtype(device)


@functools.cache
def _probe_auto_dtype(device: str) -> str:
    # A torch-free process (the dashboard) must not load torch, yet "auto" depends on the GPU:
    # the same function run once in a child interpreter gives the engine's answer.
    from core.jobs.launch import child_env

    code = f"import torch; from core.models.fingerprint import compute_dtype; print(compute_dtype('auto', {device!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=False
    )
    if out.returncode != 0:
        from core.errors import ConfigError

        last = (out.stderr.strip().splitlines() or ["the device check failed"])[-1]
        raise ConfigError(last.split("Error: ", 1)[-1])
    return out.stdout.strip()
