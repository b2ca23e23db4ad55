"""Loading raw rows through `datasets`: hub ids, local files, and the data shipped in the package.

A source is one of
    * `"builtin:NAME"`: a file shipped in `jaxrlhf/data/builtin` (see `BUILTIN`);
    * a local file (`.json`, `.jsonl`, `.csv`, `.tsv`, `.parquet`, each optionally `.gz`/`.bz2`/`.xz`/
        `.zst`) or a local directory that `datasets.load_dataset` understands;
    * a hub id such as `"Anthropic/hh-rlhf"` (with optional `config`, `data_dir`, `split`, `revision`);
    * already in memory: a `datasets.Dataset`, a list of row dicts, or a dict of columns.
Everything is returned as a `Table` of plain Python column lists, the form the row parsers read.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
from collections.abc import Mapping, Sequence
from typing import Any

BUILTIN_PREFIX = "builtin:"
BUILTIN = {
        # 2,048 Anthropic HH-RLHF harmless-base test comparisons (MIT, Copyright (c) 2022 Anthropic).
        "hh_rlhf_harmless": "hh_rlhf_harmless_2048.jsonl.gz",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass
class Table:
    """Rows of one source as columns. `name` is what error messages call the source."""

    name: str
    columns: dict[str, list]

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def row(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.columns.items()}


def builtin_path(name: str) -> str:
    """Filesystem path of a shipped data file, e.g. `builtin_path("hh_rlhf_harmless")`."""
    if name.startswith(BUILTIN_PREFIX):
        name = name[len(BUILTIN_PREFIX):]
    if name not in BUILTIN:
        raise ValueError(f"unknown builtin data set {name!r}; known: {sorted(BUILTIN)}")
    res = importlib.resources.files("jaxrlhf").joinpath("data", "builtin", BUILTIN[name])
    path = str(res)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"builtin data file missing from the installed package: {path}")
    return path


def _builder_for(path: str) -> str:
    base = path.lower()
    for ext in _COMPRESSIONS:
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    ext = os.path.splitext(base)[1]
    if ext not in _BUILDERS:
        raise ValueError(
            f"{path}: cannot tell the file format from its name; "
            f"expected one of {sorted(_BUILDERS)} (optionally compressed)"
        )
    return _BUILDERS[ext]


def _root_cause(e: BaseException) -> str:
    """The innermost exception's message: `datasets` wraps parser errors in a generic one."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300]


def load_dataset_source(
    source: str,
    *,
    config: str | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
):
    """Returns `(datasets.Dataset, display_name)` for a builtin name, local path or hub id."""
    import datasets  # imported lazily: it is slow to import and not needed for in-memory data

    split = split or "train"
    if source.startswith(BUILTIN_PREFIX):
        path = builtin_path(source)
        ds = datasets.load_dataset("json", data_files=path, split=split, cache_dir=cache_dir)
        return ds, source
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        builder = _builder_for(path)
        kwargs = {"delimiter": "\t"} if ".tsv" in path.lower() else {}
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: the file is empty")
        try:
            ds = datasets.load_dataset(builder, data_files=path, split=split, cache_dir=cache_dir, **kwargs)
        except (datasets.exceptions.DatasetGenerationError, EOFError, OSError, StopIteration) as e:
            raise ValueError(f"{path}: cannot read it as {builder}: {_root_cause(e)}") from None
        return ds, path
    if os.path.isdir(path):
        ds = datasets.load_dataset(path, config, data_dir=data_dir, split=split, cache_dir=cache_dir)
        return ds, path
    # Anything else is a hub id; with no network this raises from `datasets` with its own message.
    ds = datasets.load_dataset(
        source, config, data_dir=data_dir, split=split, revision=revision, cache_dir=cache_dir
    )
    name = source + (f":{config}" if config else "") + (f"/{data_dir}" if data_dir else "")
    return ds, f"{name}[{split}]"


def load_table(
    source: Any,
    *,
    config: str | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    max_rows: int | None = None,
    column_map: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Table:
    """Loads a source (see module doc) as a `Table`.

    column_map renames columns, `{"question": "prompt"}`; max_rows keeps the first rows only.
    """
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"a row limit of {max_rows!r} (data.limit, max_rows) must be a count >= 0; "
                         f"0 in a config reads every row")
    if isinstance(source, str):
        ds, display = load_dataset_source(
            source, config=config, split=split, data_dir=data_dir, revision=revision,
            cache_dir=cache_dir,
        )
        if max_rows is not None:
            ds = ds.select(range(min(max_rows, len(ds))))
        columns = ds.to_dict()
    else:
        display = "<memory>"
        columns = _columns_of(source)
        if max_rows is not None:
            columns = {k: v[:max_rows] for k, v in columns.items()}
    if column_map:
        missing = [k for k in column_map if k not in columns]
        if missing:
            raise ValueError(
                f"{display}: column_map names columns that are absent: {missing}; "
                f"columns are {sorted(columns)}"
            )
        columns = {column_map.get(k, k): v for k, v in columns.items()}
    return Table(name or display, columns)


def _columns_of(data: Any) -> dict[str, list]:
    if hasattr(data, "to_dict") and hasattr(data, "column_names"):  # datasets.Dataset
        return data.to_dict()
    if isinstance(data, Mapping):
        cols = {k: list(v) for k, v in data.items()}
        if len({len(v) for v in cols.values()}) > 1:
            raise ValueError("in-memory columns have different lengths")
        return cols
    if isinstance(data, Sequence):
        keys: dict[str, None] = {}
        for row in data:
            if not isinstance(row, Mapping):
                raise ValueError(f"in-memory rows must be dicts, got {type(row).__name__}")
            keys.update(dict.fromkeys(row))
        return {k: [row.get(k) for row in data] for k in keys}
    raise TypeError(f"cannot load data from a {type(data).__name__}")
