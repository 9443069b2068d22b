"""Tokens without torch: the tokenizer a model's prompts go through, read from local files.

The Datasets page counts a prompt's and each answer word's tokens with it, and `grouptune init`
checks with it that the answer words can be scored (each has tokens, no two the same), reporting
a bad word with its task before any job runs instead of inside a gradients job.

Only the `tokenizers` library is used (no torch, no transformers: the dashboard imports this).
The built-in tiny models' tokenizer is built here (core.models.loading wraps this same object for
transformers); a provisioned registry model, a local model folder and a Hub model already in the
Hugging Face cache give their tokenizer.json. A model not downloaded yet gives None: nothing is
fetched here.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from core import settings
from core.errors import DataError

log = logging.getLogger("grouptune.tokens")

# The entries of core.models.registry.MODELS built in code (tests/test_tokens.py holds the two equal).
BUILTIN_MODELS = ("tiny-llama", "tiny-gpt2")
EOS = "<|endoftext|>"

# Words that become single tokens in the built-in tokenizer (also capitalised, and with a leading
# space). Answer words of the sample tasks and tests are included so prompts behave like SmolLM2's.
WORDS = """
the of and to in is was it for on that with as are be this by at from or an not but have has had
they you he she we his her its their our your my me him them us who what which when where why how
all any some no yes one two three four five six seven eight nine ten first last new old good bad
great best better worse worst very more most less much many few other such only also just than
then so if about into over after before out up down off again can could will would should may
might must do does did done make made get got go going went come came take took see saw know
think say said like love hate want need use used work works find give tell feel seem try call
time year day way man woman people thing things world life hand part place case week company
system program question number point home water room mother area money story fact month lot
right study book eye job word business issue side kind head house service friend father power
hour game line end member law car city community name president team minute idea kid body
information back parent face others level office door health person art war history party
result change morning reason research girl guy moment air teacher force education food film
movie movies review reviews product products phone price quality battery sound screen order
restaurant place staff waiter waitress bread taste delicious service experience recommend
never ever really well even still here there now today too because while through between
positive negative neutral true false spam ham fresh rotten objective subjective entailment
contradiction sentiment label answer text premise hypothesis subject email message sports
politics science religion computer computers graphics hardware software space medicine
electronics cars autos motorcycles baseball hockey guns crypto christian atheism mideast
forsale misc windows mac trade earn acq crude grain interest ship rating rate topic news
sale sales buy sell bought sold stock market oil shares profit loss net group
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (byte-level BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
    bs += list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_builtin_tokenizer():
    """The tiny models' byte-level BPE as a `tokenizers.Tokenizer` (see core.models.tiny.builtin_tokenizer).

    The vocabulary holds the 256 byte symbols and every prefix of every word in WORDS (with and
    without a leading space, also capitalised); merges grow words left to right. Token 0 is
    `<|endoftext|>`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    b2u = bytes_to_unicode()
    vocab: dict[str, int] = {EOS: 0}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    words = list(dict.fromkeys(w for base in WORDS for w in (base, base.capitalize())))
    merges: list[tuple[str, str]] = []
    for forms in ([" " + w for w in words], words):  # space-prefixed forms rank first
        for w in forms:
            chars = "".join(b2u[b] for b in w.encode("utf-8"))
            cur = chars[0]
            for ch in chars[1:]:
                new = cur + ch
                if new not in vocab:
                    vocab[new] = len(vocab)
                    merges.append((cur, ch))
                cur = new
    # ignore_merges: a pre-token (word) that is itself in the vocabulary becomes one token
    # directly; otherwise merges of other words could split e.g. "positive" at "it".
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True)
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return tk


# --- a model's tokenizer, from local files only ----------------------------------------------
def models_dir() -> Path:
    """Where core.models.loading provisions registry models: `$GROUPTUNE_CACHE/models` (default
    ~/.cache/grouptune/models), read per call like core.models.registry.cache_dir."""
    return settings.cache_dir() / "models"


@functools.lru_cache(maxsize=1)
def _builtin():
    from tokenizers import AddedToken

    tk = build_builtin_tokenizer()
    # transformers registers eos as a special token (core.models.tiny.builtin_tokenizer): do the same
    # here, so `<|endoftext|>` in a text counts as the one token the model sees
    tk.add_special_tokens([AddedToken(EOS, special=True)])
    return tk


@functools.lru_cache(maxsize=8)
def _from_file(path: str, mtime: float):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def _tokenizer_file(model: str, revision: str | None) -> Path | None:
    """tokenizer.json of a registry, local or cached Hub model, in core.models.loading' lookup order."""
    registry = models_dir() / model / "tokenizer.json"
    if registry.is_file():
        return registry
    local = Path(model).expanduser() / "tokenizer.json"
    if local.is_file():
        return local
    if model.count("/") == 1 and not model.startswith((".", "~", "/")):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "tokenizer.json", revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def local_tokenizer(model: str, revision: str | None = None):
    """The `tokenizers.Tokenizer` of `model` if it is on this machine, else None."""
    if model in BUILTIN_MODELS:
        return _builtin()
    path = _tokenizer_file(model, revision)
    if path is None:
        return None
    try:
        return _from_file(str(path), path.stat().st_mtime)
    except Exception as err:  # noqa: BLE001 - a tokenizer.json `tokenizers` cannot read: no count
        log.warning("%s: not readable by `tokenizers` (%s)", path, err)
        return None


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (what core.data.prompts encodes)."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def count_tokens(model: str, text: str, revision: str | None = None) -> int | None:
    tok = local_tokenizer(model, revision)
    return None if tok is None else len(encode(tok, text))


# --- answer words ------------------------------------------------------------------------------
def answer_word_problems(tokenizer, task) -> list[str]:
    """One line per answer word of `task` that has no tokens or the same tokens as another word
    (core.data.prompts.answer_tokens refuses both: such words cannot be told apart)."""
    problems, seen = [], {}
    for label, word in task.labels.items():
        ids = tuple(encode(tokenizer, word))
        if not ids:
            problems.append(
                f"task {task.name}, label {label!r}: answer word {word!r} has no tokens"
            )
        elif ids in seen:
            pieces = [tokenizer.id_to_token(i) for i in ids]
            problems.append(
                f"task {task.name}: answer words {seen[ids]!r} and {word!r} are the same "
                f"tokens {pieces}"
            )
        else:
            seen[ids] = word
    return problems


def multi_token_words(tokenizer, task) -> dict[str, int]:
    """{answer word: tokens} of the words longer than one token. They are scored by the sum of
    their tokens' log-probabilities, at the cost of one more sequence per row for each distinct
    beginning (core.data.prompts.Answers)."""
    lengths = {word: len(encode(tokenizer, word)) for word in task.labels.values()}
    return {word: n for word, n in lengths.items() if n > 1}


def template_problems(tokenizer, task, max_tokens: int) -> list[str]:
    """A line when `task`'s template alone leaves less than MIN_TEXT_TOKENS of data.max_tokens
    for the text (core.data.prompts.encode_prompt refuses every row then)."""
    from core.data.prompts import MIN_TEXT_TOKENS

    fixed = len(encode(tokenizer, task.render({"text": "", "text_pair": ""})))
    if max_tokens - fixed >= MIN_TEXT_TOKENS:
        return []
    return [
        f"task {task.name}: the template alone is {fixed} tokens, which leaves less than "
        f"{MIN_TEXT_TOKENS} of data.max_tokens = {max_tokens} for the text"
    ]


def check_tokens(cfg, tasks) -> None:
    """What needs `cfg.model`'s tokenizer, before any job: raise one DataError naming every
    answer word (task, label, word, its pieces) it cannot score, and one naming every template
    too long for data.max_tokens; log the tasks whose words are several tokens (they cost more
    forwards). A model not on this machine yet is not checked (a warning says so; the
    gradients job checks it then): init never downloads a model."""
    tok = local_tokenizer(cfg.model.name, cfg.model.revision)
    if tok is None:
        log.warning(
            "answer words not checked: model %s is not on this machine yet (grouptune "
            "fetch-model %s); the gradients step checks them",
            cfg.model.name,
            cfg.model.name,
        )
        return
    problems = [p for task in tasks for p in answer_word_problems(tok, task)]
    if problems:
        raise DataError(
            f"{len(problems)} answer word(s) cannot be scored by model {cfg.model.name}: "
            + "; ".join(problems)
            + ". Give each label its own answer word in the task's labels",
            field="labels",
        )
    long = [p for task in tasks for p in template_problems(tok, task, cfg.data.max_tokens)]
    if long:
        raise DataError(
            "; ".join(long) + ": shorten the template or raise data.max_tokens",
            field="data.max_tokens",
        )
    for task in tasks:
        if longer := multi_token_words(tok, task):
            words = ", ".join(f"{w!r} ({n} tokens)" for w, n in longer.items())
            log.info("task %s: multi-token answer words %s, scored by summed log-probability",
                     task.name, words)  # fmt: skip
