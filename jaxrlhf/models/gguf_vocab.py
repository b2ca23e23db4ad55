"""An HF tokenizer as llama.cpp's `tokenizer.ggml.*` metadata, for the GGUF exporter (byte-level BPE only).

llama.cpp does not read `tokenizer.json`: it rebuilds the tokenizer from the token list, the merges, the
token types and a pre-tokenizer *name* (`tokenizer.ggml.pre`) that selects one of its built-in split
regexes. So only tokenizers it can reproduce are written: byte-level BPE (GPT-2 style: SmolLM2, Qwen2,
Llama 3) whose pre-tokenizer is one of the known ones below. Sentencepiece-style vocabularies (Metaspace,
byte-fallback BPE, Unigram) and word-level ones are refused with one line rather than written wrongly.
The keys and values are the ones llama.cpp's own converter writes (see the SmolLM2 GGUF asset).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# llama.cpp token types (gguf.TokenType): what its tokenizer does with each id.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# Split regexes of `Sequence[Split(regex), ByteLevel(use_regex=False)]` pre-tokenizers -> llama.cpp name.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclasses.dataclass
class GGUFVocab:
    pre: str                      # tokenizer.ggml.pre
    tokens: list[str]             # one per embedding row
    token_types: list[int]
    merges: list[str]             # "left right", best first
    special_ids: dict[str, int]   # bos / eos / unk / pad -> id (absent ones left out)
    add_bos: bool
    add_eos: bool
    chat_template: str | list | None
    notes: list[str] = dataclasses.field(default_factory=list)  # what llama.cpp will do differently


def _refuse(where, msg):
    raise ValueError(f"{where}: tokenizer cannot be written to GGUF: {msg}")


def _pre_name(pre: dict | None, where) -> str:
    """llama.cpp's name for this byte-level pre-tokenizer; refuses one it has no equivalent of."""
    kind = (pre or {}).get("type")
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            _refuse(where, "ByteLevel(add_prefix_space=True) has no llama.cpp equivalent")
        if pre.get("use_regex", True):
            return "gpt-2"  # GPT-2's own split regex
    if kind == "Sequence":
        parts = pre.get("pretokenizers") or []
        kinds = [p.get("type") for p in parts]
        if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
            return "smollm"  # digits one by one, then GPT-2's regex
        if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
            name = _SPLITS.get((parts[0].get("pattern") or {}).get("Regex"))
            if name:
                return name
    if kind is None:
        _refuse(where, "it has no pre-tokenizer; only byte-level BPE tokenizers are supported")
    if "Metaspace" in json.dumps(pre):
        _refuse(where, "it is sentencepiece-style (Metaspace); only byte-level BPE tokenizers are supported")
    _refuse(where, f"pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp equivalent this exporter knows "
                   f"(known: GPT-2 ByteLevel, SmolLM digits, Llama 3 and Qwen2 splits)")


def _load(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as e:  # noqa: BLE001 -- any failure is one line: no usable tokenizer there
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise ValueError(f"{tokenizer_dir}: cannot load the tokenizer, which the GGUF file must carry "
                         f"({type(e).__name__}: {first})") from None
    if not getattr(tok, "is_fast", False):
        _refuse(tokenizer_dir, f"{type(tok).__name__} has no tokenizer.json form to read")
    return tok


def vocab_of(tokenizer_dir: str | Path, vocab_size: int, config: dict | None = None) -> GGUFVocab:
    """The GGUF vocabulary of the tokenizer in `tokenizer_dir`, padded to the model's `vocab_size` rows.

    `config`: the model's config.json, for special ids the tokenizer does not name. Raises ValueError (one
    line naming the directory) for a tokenizer llama.cpp could not reproduce."""
    tokenizer_dir = Path(tokenizer_dir)
    tok = _load(tokenizer_dir)
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        _refuse(tokenizer_dir, f"{model.get('type')} model; only byte-level BPE tokenizers are supported"
                               + (" (sentencepiece Unigram)" if model.get("type") == "Unigram" else ""))
    if model.get("byte_fallback"):
        _refuse(tokenizer_dir, "byte-fallback BPE is sentencepiece-style; only byte-level BPE is supported")
    notes = []
    normalizer = (spec.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        _refuse(tokenizer_dir, f"normalizer {normalizer} has no llama.cpp equivalent")
    if normalizer == "NFC":  # Qwen2's; text already in NFC (nearly all text) tokenises the same
        notes.append("the tokenizer's NFC normalisation is not in GGUF: llama.cpp tokenises text as given")
    pre = _pre_name(spec.get("pre_tokenizer"), tokenizer_dir)

    by_id = {int(i): t for t, i in model["vocab"].items()}
    types = {}
    for added in spec.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        types[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    n = max(by_id) + 1
    if n > vocab_size:
        _refuse(tokenizer_dir, f"{n} token ids, but the model has only {vocab_size} embedding rows")
    # Rows no token uses (vocabularies padded to a multiple of 64 or 128) get llama.cpp's placeholders.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, NORMAL if i in by_id else UNUSED) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    config = config or {}
    special = {}
    for key in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{key}_token_id", None)
        if tid is None:
            tid = config.get(f"{key}_token_id")
            tid = tid[0] if isinstance(tid, list) and tid else tid
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            special[key] = tid
    # Whether the tokenizer itself adds BOS/EOS, seen in what it does rather than in flags it may not have.
    with_special = tok("a")["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    extra = len(with_special) > len(plain)
    add_bos = extra and "bos" in special and with_special[0] == special["bos"]
    add_eos = extra and "eos" in special and with_special[-1] == special["eos"]
    template = tok.chat_template
    if isinstance(template, dict):  # named templates: GGUF keeps them as tokenizer.chat_template.<name>
        template = [{"name": k, "template": v} for k, v in template.items()]
    return GGUFVocab(pre, tokens, token_types, merges, special, add_bos, add_eos, template or None, notes)


def add_vocab(writer, vocab: GGUFVocab) -> None:
    """Writes `vocab` as the tokenizer.* keys llama.cpp's converter writes."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
               "pad": writer.add_pad_token_id}
    for key, tid in vocab.special_ids.items():
        setters[key](tid)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)  # byte-level BPE never prepends a space
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
