"""Invalid rows: one-line errors naming file, row and field; skip mode counts them by reason.

Also the loaders for each local file kind (json, jsonl(.gz), csv(.gz), tsv, parquet, directory).
"""

from __future__ import annotations

import gzip

import pytest

from jaxrlhf.data import DataError, load_records, load_table
from tests.helpers.data import write_jsonl

GOOD = {"prompt": "p", "chosen": "good", "rejected": "bad"}

PAIR_CASES = [  # (bad row, field, reason kind)
    ({"prompt": "p", "rejected": "bad"}, "chosen", "missing"),
    ({"prompt": "p", "chosen": "good", "rejected": "  \n "}, "rejected", "empty"),
    ({"prompt": 123, "chosen": "good", "rejected": "bad"}, "prompt", "not string"),
    ({"prompt": "p", "chosen": ["good"], "rejected": "bad"}, "chosen", "not string"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "identical"),
    ({"prompt": "p", "chosen": "good", "rejected": "bad", "margin": "lots"}, "margin", "not numeric"),
]


@pytest.mark.parametrize("bad,field,kind", PAIR_CASES, ids=[c[2] + "-" + c[1] for c in PAIR_CASES])
def test_invalid_pair_row_names_file_row_and_field(tmp_path, bad, field, kind):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as info:
        load_records(path, format="pairs", cache_dir=str(tmp_path / "c"))
    err = info.value
    assert (err.source, err.row, err.field) == (path, 3, field)
    msg = str(err)
    assert msg.startswith(f"{path}: row 3: field '{field}': {kind}")
    assert "\n" not in msg


def test_skip_mode_counts_each_reason(tmp_path):
    rows = [GOOD] + [bad for bad, _, _ in PAIR_CASES] + [GOOD]
    path = write_jsonl(tmp_path / "prefs.jsonl.gz", rows)
    parsed = load_records(path, format="pairs", on_invalid="skip", cache_dir=str(tmp_path / "c"))
    assert [r.row for r in parsed.records] == [1, len(rows)]
    assert dict(parsed.report.invalid) == {"missing": 1, "empty": 1, "not_string": 2, "identical": 1,
                                           "not_numeric": 1}
    flat = parsed.report.as_dict()
    assert flat["rows"] == 8 and flat["kept"] == 2 and flat["invalid/not_string"] == 2


def test_invalid_rating_in_csv(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("prompt,response,reward\np,a,1\np,b,abc\np,c,2\n")
    with pytest.raises(DataError, match=r"ratings\.csv: row 2: field 'reward': not numeric"):
        load_records(str(path), cache_dir=str(tmp_path / "c"))
    parsed = load_records(str(path), on_invalid="skip", cache_dir=str(tmp_path / "c"))
    assert [r.response for r in parsed.records] == ["a", "c"]
    assert parsed.report.invalid == {"not_numeric": 1}


def test_missing_rating_and_bad_ranked_rows(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "response": "a", "rating": None}])
    with pytest.raises(DataError, match=r"row 1: field 'rating': missing"):
        load_records(path, cache_dir=str(tmp_path / "c"))
    rows = [{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 2]},
            {"prompt": "p", "responses": ["a", "b"], "ranks": [1]},
            {"prompt": "p", "responses": ["a", ""], "ranks": [1, 2]},
            {"prompt": "p", "responses": "ab", "ranks": [1, 2]}]
    table = load_table(rows, name="ranked.jsonl")
    with pytest.raises(DataError, match=r"ranked\.jsonl: row 2: field 'ranks': bad structure"):
        load_records(rows, name="ranked.jsonl")
    parsed = load_records(table.columns, on_invalid="skip")
    assert len(parsed.records) == 1
    assert dict(parsed.report.invalid) == {"bad_structure": 2, "empty": 1}


def test_hh_rows_without_a_shared_prompt(tmp_path):
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: yo\n\nAssistant: b"},
            {"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: x\n\nAssistant: a"}]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.raises(DataError, match=r"hh\.jsonl: row 2: field 'chosen': no shared prompt"):
        load_records(path, cache_dir=str(tmp_path / "c"))
    parsed = load_records(path, on_invalid="skip", cache_dir=str(tmp_path / "c"))
    assert dict(parsed.report.invalid) == {"no_shared_prompt": 1, "identical": 1}


def test_missing_column_is_reported_once(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match=r"field 'rejected': column missing"):
        load_records(path, format="pairs", cache_dir=str(tmp_path / "c"))


def test_every_local_file_kind_loads(tmp_path):
    rows = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]
    import pandas as pd

    frame = pd.DataFrame(rows)
    paths = [write_jsonl(tmp_path / "a.jsonl", rows), write_jsonl(tmp_path / "b.jsonl.gz", rows)]
    (tmp_path / "c.json").write_text(frame.to_json(orient="records"))
    frame.to_csv(tmp_path / "d.csv", index=False)
    with gzip.open(tmp_path / "e.csv.gz", "wt") as f:
        frame.to_csv(f, index=False)
    frame.to_csv(tmp_path / "f.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "g.parquet")
    paths += [str(tmp_path / n) for n in ("c.json", "d.csv", "e.csv.gz", "f.tsv", "g.parquet")]
    for path in paths:
        parsed = load_records(path, cache_dir=str(tmp_path / "cache"))
        assert [(r.prompt, r.chosen, r.rejected) for r in parsed.records] == [
            ("p1", "a", "b"), ("p2", "c", "d")], path
    table = load_table(paths[0], column_map={"prompt": "question"}, cache_dir=str(tmp_path / "cache"))
    assert table.column_names == ["question", "chosen", "rejected"]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the file format"):
        load_table(str(tmp_path / "notes.txt"))


def test_directory_and_hub_sources(tmp_path, monkeypatch):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    table = load_table(str(folder), cache_dir=str(tmp_path / "c"))
    assert table.columns == {"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}

    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):  # the hub is unreachable here
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_list(rows * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    table = load_table("Anthropic/hh-rlhf", data_dir="harmless-base", split="test", revision="abc",
                       max_rows=2)
    assert calls == [("Anthropic/hh-rlhf", None, {"data_dir": "harmless-base", "split": "test",
                                                  "revision": "abc", "cache_dir": None})]
    assert table.name == "Anthropic/hh-rlhf/harmless-base[test]" and table.num_rows == 2
