"""A tiny word-level decoder tokenizer, so tests need no download: BOS (optional), EOS `</s>`, pad `<pad>`."""

from __future__ import annotations

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("one two three four five six seven eight nine ten red green blue hello world hi there "
         "good bad yes no what why user assistant system a b c d e f g").split()
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]  # ids 0..5, then WORDS


def make_decoder_tokenizer(bos: bool = True, chat: bool = True):
    """A tiny word-level decoder tokenizer: BOS (optional) + text, eos `</s>`, pad `<pad>`, ChatML."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + list(WORDS))}
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


def ids_of(tokenizer, words: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(words.split())
