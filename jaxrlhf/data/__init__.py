"""Comparison data for reward models: loading, validation, tokenising, batching.

    sources   builtin / local file / hub id -> Table of columns (through `datasets`)
    formats   Table -> validated records (pairs, HH dialogues, chat, ranked lists, ratings)
    records   record types; lists and ratings -> pairs
    chat      chat-message rows rendered with the tokenizer's template
    tokenize  records -> ragged token sequences with truncation that keeps the response end
    batching  fixed-shape numpy batches: length bucketing, resumable, per-process slices
    split     train / held-out by prompt group
    usable    one-line errors for data that leaves nothing sensible to train (and their rules)
    pipeline  the above in one call
"""

from jaxrlhf.data.batching import ListBatcher, PairBatcher, RegressionBatcher
from jaxrlhf.data.errors import DataError, DataReport
from jaxrlhf.data.formats import FORMATS, detect_format, parse_table, split_hh
from jaxrlhf.data.pipeline import as_pairs, load_list_data, load_pair_data, load_rated_data, load_records
from jaxrlhf.data.records import Pair, RankedList, Rated, ranked_to_pairs, ratings_to_pairs
from jaxrlhf.data.sources import BUILTIN, builtin_path, load_table
from jaxrlhf.data.split import split_by_prompt
from jaxrlhf.data.tokenize import (
                                   Encoded,
                                   ListData,
                                   PairData,
                                   RatedData,
                                   special_tokens,
                                   tokenize_lists,
                                   tokenize_pairs,
                                   tokenize_rated,
)

__all__ = [
    "BUILTIN", "DataError", "DataReport", "Encoded", "FORMATS", "ListBatcher", "ListData", "Pair",
    "PairBatcher", "PairData", "RankedList", "Rated", "RatedData", "RegressionBatcher", "as_pairs",
    "builtin_path", "detect_format", "load_list_data", "load_pair_data", "load_rated_data",
    "load_records", "load_table", "parse_table", "ranked_to_pairs", "ratings_to_pairs",
    "special_tokens", "split_by_prompt", "split_hh", "tokenize_lists", "tokenize_pairs",
    "tokenize_rated",
]
