"""Agreement, consensus and win-rate arithmetic of jaxrlhf/feedback/agreement.py, and the export and A/B
report built on them (jaxrlhf/feedback/export.py), each against a case worked out by hand here.

Krippendorff's alpha has a second reference: a brute-force version from the coincidence-matrix definition
(Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"), and the worked example of that paper
(4 coders, 12 units, interval alpha 0.849).
"""

import itertools
import json
import math
import random

import pytest

from jaxrlhf.feedback import store as store_module
from jaxrlhf.feedback.agreement import (
    consensus_ranks,
    item_agreement,
    kendall_tau,
    krippendorff_alpha_interval,
    win_rate,
)
from jaxrlhf.feedback.export import export, pair_rows, ranking_rows, report
from jaxrlhf.feedback.store import Store
from jaxrlhf.feedback.tasks import read_tasks
from tests.helpers.data import write_jsonl


def test_kendall_tau_by_hand():
    assert kendall_tau([0, 1, 2], [0, 1, 2]) == 1.0
    assert kendall_tau([0, 1, 2], [2, 1, 0]) == -1.0
    # pairs (0,1): discordant, (0,2) and (1,2): concordant -> (2 - 1) / 3
    assert kendall_tau([0, 1, 2], [1, 0, 2]) == pytest.approx(1 / 3)
    # 4 responses, 6 pairs, only (1,2) swapped -> (5 - 1) / 6
    assert kendall_tau([0, 1, 2, 3], [0, 2, 1, 3]) == pytest.approx(2 / 3)
    # symmetric, and only the order matters, not the rank values
    assert kendall_tau([1, 0, 2], [0, 1, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([0, 5, 9], [10, 20, 30]) == 1.0
    with pytest.raises(ValueError):
        kendall_tau([0, 1], [0, 1, 2])
    with pytest.raises(ValueError):
        kendall_tau([0], [0])


def test_item_agreement_by_hand():
    # taus: (r1, r2) = 1, (r1, r3) = 1/3, (r2, r3) = 1/3 -> mean 5/9; agreement (1 + 5/9) / 2 = 7/9
    tau, agreement = item_agreement([[0, 1, 2], [0, 1, 2], [1, 0, 2]])
    assert tau == pytest.approx(5 / 9) and agreement == pytest.approx(7 / 9)
    # two opposite rankings: tau -1, agreement 0
    assert item_agreement([[0, 1, 2], [2, 1, 0]]) == (-1.0, 0.0)
    assert item_agreement([[0, 1, 2]]) == (None, None)
    assert item_agreement([]) == (None, None)


def test_consensus_ranks_by_hand():
    # mean ranks: response 0: (0+1+0)/3 = 1/3, response 1: (1+0+2)/3 = 1, response 2: (2+2+1)/3 = 5/3
    assert consensus_ranks([[0, 1, 2], [1, 0, 2], [0, 2, 1]]) == (0, 1, 2)
    # means 0.5, 0.5, 2: a tie at the top, dense ranks
    assert consensus_ranks([[0, 1, 2], [1, 0, 2]]) == (0, 0, 1)
    # means 2, 1.5, 0.5, 2: response 2 best, 1 next, 0 and 3 tied last
    assert consensus_ranks([[2, 1, 0, 3], [2, 2, 1, 1]]) == (2, 1, 0, 2)
    assert consensus_ranks([[1, 0]]) == (1, 0)


def test_win_rate_mean_interval_and_clipping():
    # [1, .5, 1, 0]: mean 2.5/4 = .625; squared deviations .140625 + .015625 + .140625 + .390625 = .6875;
    # sample variance .6875/3; half width 1.96 * sqrt(.6875/3) / sqrt(4) = .46914; upper 1.094 clipped to 1
    out = win_rate([1.0, 0.5, 1.0, 0.0])
    half = 1.96 * math.sqrt(0.6875 / 3) / 2
    assert out["items"] == 4 and out["win_rate_b"] == pytest.approx(0.625)
    assert out["ci95"] == pytest.approx([0.625 - half, 1.0])
    assert 0.625 - half == pytest.approx(0.15586, abs=1e-5)
    # [0, 0, .5]: mean 1/6; squared deviations 1/36 + 1/36 + 4/36 = 1/6; variance 1/12; std / sqrt(3) = 1/6;
    # half width 1.96/6; lower bound negative, clipped to 0; upper 1/6 + 1.96/6 = 2.96/6
    out = win_rate([0.0, 0.0, 0.5])
    assert out["win_rate_b"] == pytest.approx(1 / 6)
    assert out["ci95"] == pytest.approx([0.0, 2.96 / 6])
    # unclipped: [.5, 1]: mean .75, variance .125, half 1.96 * sqrt(.125) / sqrt(2) = .49
    assert win_rate([0.5, 1.0])["ci95"] == pytest.approx([0.26, 1.0])  # .75 + .49 = 1.24 -> 1
    assert win_rate([0.25, 0.5])["ci95"] == pytest.approx([0.375 - 0.245, 0.375 + 0.245])
    assert win_rate([1.0]) == {"items": 1, "win_rate_b": 1.0, "ci95": None}
    assert win_rate([]) == {"items": 0, "win_rate_b": None, "ci95": None}


def alpha_from_coincidences(units):
    """Krippendorff's interval alpha straight from the coincidence matrix: o_ck = sum over units of the
    ordered pairs (c, k) of values in the unit, each weighted 1 / (m_u - 1); n_c = sum_k o_ck; n = sum n_c;
    alpha = 1 - (n - 1) sum_ck o_ck (c - k)^2 / sum_ck n_c n_k (c - k)^2."""
    coincidences = {}
    for unit in units:
        if len(unit) < 2:
            continue
        for i, j in itertools.permutations(range(len(unit)), 2):
            key = (unit[i], unit[j])
            coincidences[key] = coincidences.get(key, 0.0) + 1.0 / (len(unit) - 1)
    totals = {}
    for (c, _), o in coincidences.items():
        totals[c] = totals.get(c, 0.0) + o
    n = sum(totals.values())
    observed = sum(o * (c - k) ** 2 for (c, k), o in coincidences.items())
    expected = sum(totals[c] * totals[k] * (c - k) ** 2 for c in totals for k in totals)
    return 1.0 - (n - 1) * observed / expected


def test_krippendorff_alpha_by_hand():
    # units [1, 1], [0, .5], [0] (one value: not pairable, dropped). Coincidences: o(1,1) = 2, o(0,.5) =
    # o(.5,0) = 1; n_1 = 2, n_0 = 1, n_.5 = 1, n = 4. Observed sum o d^2 = 2 * .25 = .5. Expected sum
    # n_c n_k d^2 over c != k: (1,0) 2*1*1 twice = 4, (1,.5) 2*1*.25 twice = 1, (0,.5) 1*1*.25 twice = .5:
    # 5.5. alpha = 1 - (4 - 1) * .5 / 5.5 = 1 - 3/11 = 8/11.
    assert krippendorff_alpha_interval([[1.0, 1.0], [0.0, 0.5], [0.0]]) == pytest.approx(8 / 11)
    assert alpha_from_coincidences([[1.0, 1.0], [0.0, 0.5], [0.0]]) == pytest.approx(8 / 11)
    # perfect agreement within units, different values across them: alpha 1
    assert krippendorff_alpha_interval([[1.0, 1.0], [0.0, 0.0, 0.0]]) == pytest.approx(1.0)
    # every value the same (no expected disagreement) or nothing pairable: undefined
    assert krippendorff_alpha_interval([[1.0, 1.0], [1.0, 1.0]]) is None
    assert krippendorff_alpha_interval([[1.0], [0.0]]) is None
    assert krippendorff_alpha_interval([]) is None


def test_krippendorff_alpha_paper_example_and_brute_force():
    # Krippendorff (2011), reliability data of 4 coders on 12 units (missing values left out): interval 0.849
    units = [[1, 1, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4], [4, 4, 4, 4],
             [1, 1, 2, 1], [2, 2, 2, 2], [5, 5, 5], [1, 1], [3]]
    assert krippendorff_alpha_interval(units) == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha_interval(units) == pytest.approx(alpha_from_coincidences(units))
    rng = random.Random(0)
    for _ in range(20):
        units = [[rng.choice([0.0, 0.5, 1.0]) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(3, 9))]
        got = krippendorff_alpha_interval(units)
        if got is None:
            continue
        assert got == pytest.approx(alpha_from_coincidences(units))


# Stores filled through the Store API, as the server fills them.

@pytest.fixture(autouse=True)
def rotated_display(monkeypatch):
    """Each annotator sees the responses rotated by one (not in the file's order, so a label stored in display
    order instead of the file's shows up in the numbers below), the same way every run."""

    class Rotate:
        def shuffle(self, x):
            x.append(x.pop(0))

    monkeypatch.setattr(store_module.random, "SystemRandom", Rotate)


def _next(store, who, prompt):
    item = store.next_item(who)
    assert item is not None and item["prompt"] == prompt, item
    return item


def _rank(store, who, prompt, best_first, unsafe=(), comment=""):
    """Labels the item `who` gets (it must be `prompt`) with this ranking of response texts."""
    item = _next(store, who, prompt)
    shown = item["responses"]
    store.submit(who, {"assignment": item["assignment"], "order": [shown.index(t) + 1 for t in best_first],
                       "unsafe": [shown.index(t) + 1 for t in unsafe], "comment": comment})


def _annotators(store, *names):
    return [store.annotator_by_token(store.add_annotator(name)) for name in names]


def test_export_ranked_and_pairs_by_hand(tmp_path):
    store = Store(str(tmp_path / "labels.sqlite"))
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"prompt": "colour?", "responses": ["red", "green", "blue"]},
        {"prompt": "animal?", "responses": ["cat", "dog"]},
        {"prompt": "number?", "responses": ["one", "two"]},
    ])
    store.add_tasks(read_tasks(tasks), needed=3, source=tasks)
    p1, p2, p3 = _annotators(store, "p1", "p2", "p3")
    # colour: p1 red > green > blue (ranks [0, 1, 2]); p2 green > red > blue ([1, 0, 2]); p3 red > blue > green
    # ([0, 2, 1]), blue unsafe. taus: (p1,p2) 1/3, (p1,p3) 1/3, (p2,p3): pair (0,1) -1, (0,2) +1, (1,2) -1 ->
    # -1/3; mean 1/9, agreement (1 + 1/9)/2 = 5/9. Mean ranks 1/3, 1, 5/3 -> consensus [0, 1, 2].
    _rank(store, p1, "colour?", ["red", "green", "blue"])
    _rank(store, p2, "colour?", ["green", "red", "blue"], comment="close call")
    _rank(store, p3, "colour?", ["red", "blue", "green"], unsafe=["blue"])
    # animal: p1 cat > dog, p2 dog > cat, p3 cat > dog: means 1/3, 2/3 -> [0, 1]; taus 1 * (-1) + 1 + (-1)
    # over 3 pairs = -1/3, agreement 1/3
    _rank(store, p1, "animal?", ["cat", "dog"], unsafe=["dog"])
    _rank(store, p2, "animal?", ["dog", "cat"], unsafe=["dog", "cat"])
    _rank(store, p3, "animal?", ["cat", "dog"])
    # number: only p1, so incomplete (needs 3)
    _rank(store, p1, "number?", ["two", "one"])

    rows = ranking_rows(store)
    assert [r["prompt"] for r in rows] == ["colour?", "animal?"]
    colour, animal = rows
    assert colour["responses"] == ["red", "green", "blue"] and colour["ranks"] == [0, 1, 2]
    assert colour["kendall_tau"] == pytest.approx(1 / 9) and colour["agreement"] == pytest.approx(5 / 9)
    assert colour["unsafe"] == [0, 0, 1] and colour["comments"] == ["close call"] and colour["annotators"] == 3
    assert animal["ranks"] == [0, 1] and animal["agreement"] == pytest.approx(1 / 3)
    assert animal["unsafe"] == [1, 2]

    pairs = pair_rows(rows)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("colour?", "red", "green"), ("colour?", "red", "blue"), ("colour?", "green", "blue"),
        ("animal?", "cat", "dog")]
    assert [p["agreement"] for p in pairs] == pytest.approx([5 / 9] * 3 + [1 / 3])

    out = export(store, tmp_path / "out" / "ranked.jsonl")
    assert out["rows"] == 2 and out["items"] == 2 and out["mean_agreement"] == pytest.approx((5 / 9 + 1 / 3) / 2)
    written = [json.loads(line) for line in (tmp_path / "out" / "ranked.jsonl").read_text().splitlines()]
    assert [w["ranks"] for w in written] == [[0, 1, 2], [0, 1]]
    out = export(store, tmp_path / "pairs.jsonl", format="pairs")
    assert out["rows"] == 4 and out["items"] == 2
    # with incomplete items: number (one label: two > one -> ranks [1, 0], no agreement)
    out = export(store, tmp_path / "all.jsonl", include_incomplete=True)
    assert out["items"] == 3 and out["mean_agreement"] == pytest.approx((5 / 9 + 1 / 3) / 2)
    number = json.loads((tmp_path / "all.jsonl").read_text().splitlines()[2])
    assert number["ranks"] == [1, 0] and number["agreement"] is None and number["kendall_tau"] is None


def test_export_tied_consensus_gives_no_pair(tmp_path):
    store = Store(str(tmp_path / "labels.sqlite"))
    store.add_tasks(read_tasks(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "responses": ["x", "y"]}])),
                    needed=2, source="t")
    p1, p2 = _annotators(store, "p1", "p2")
    _rank(store, p1, "q", ["x", "y"])
    _rank(store, p2, "q", ["y", "x"])
    rows = ranking_rows(store)
    assert rows[0]["ranks"] == [0, 0] and rows[0]["agreement"] == 0.0  # means .5, .5; tau -1
    assert pair_rows(rows) == []
    with pytest.raises(ValueError, match="no ranking item has all its labels"):
        export(Store(str(tmp_path / "empty.sqlite")), tmp_path / "x.jsonl")


def _write_compare(folder, items):
    """A `jaxrlhf.compare` output folder: items are (prompt, label of A, reward_a, reward_b)."""
    folder.mkdir()
    rows, key_items = [], []
    for i, (prompt, a, reward_a, reward_b) in enumerate(items):
        text_a, text_b = f"A answers {i}", f"B answers {i}"
        first, second = (text_a, text_b) if a == 1 else (text_b, text_a)
        rows.append({"id": i, "prompt": prompt, "response_1": first, "response_2": second})
        key_items.append({"id": i, "a": a, "b": 3 - a, "reward_a": reward_a, "reward_b": reward_b,
                          "length_a": 3, "length_b": 3})
    write_jsonl(folder / "pairs.jsonl", rows)
    (folder / "key.json").write_text(json.dumps({"a": "policy-alpha", "b": "policy-beta", "items": key_items}))
    return folder


def _ab(store, who, prompt, side):
    """`who` labels their next item (it must be `prompt`): side a, b, tie or skip."""
    item = _next(store, who, prompt)
    body = {"assignment": item["assignment"]}
    if side == "skip":
        body["skip"] = True
    elif side == "tie":
        body["choice"] = "tie"
    else:
        body["choice"] = str(item["responses"].index(f"{side.upper()} answers {prompt[-1]}") + 1)
    store.submit(who, body)


def test_report_by_hand(tmp_path):
    store = Store(str(tmp_path / "labels.sqlite"))
    # (prompt, label of A, reward_a, reward_b): the reward model prefers B on q0, A on q1 and q3, ties on q2
    folder = _write_compare(tmp_path / "compare", [("q0", 1, 0.1, 0.9), ("q1", 2, 2.0, -1.0), ("q2", 1, 0.5, 0.5),
                                                    ("q3", 2, 1.0, 0.0)])
    store.add_tasks(read_tasks(folder), needed=3, source=str(folder))
    p1, p2, p3 = _annotators(store, "p1", "p2", "p3")
    for who, sides in ((p1, "b a a b"), (p2, "b b a skip"), (p3, "tie skip a")):
        for k, side in enumerate(sides.split()):
            _ab(store, who, f"q{k}", side)
    # Verdicts (scored for B: b 1, tie .5, a 0): q0 b b tie -> 5/6; q1 a b -> 1/2 (p3 skipped);
    # q2 a a a -> 0; q3 b -> 1 (p2 skipped, p3 never labelled it).
    out = report(store)
    assert out["verdicts"] == {"a": 4, "b": 4, "tie": 1}
    assert out["items_with_two_or_more"] == 3
    # Win rate of B: mean of (5/6, 1/2, 0, 1) = 7/12; squared deviations (3/12)^2 + (1/12)^2 + (7/12)^2 +
    # (5/12)^2 = 84/144 = 7/12; sample variance 7/36, std sqrt(7)/6; half width 1.96 * sqrt(7)/6 / 2 = .43214;
    # interval [.15119, 1.01547] clipped to [.15119, 1].
    human = out["human"]
    assert human["items"] == 4 and human["win_rate_b"] == pytest.approx(7 / 12)
    assert human["ci95"] == pytest.approx([7 / 12 - 0.98 * math.sqrt(7) / 6, 1.0])
    assert human["ci95"][0] == pytest.approx(0.15119, abs=1e-5)
    # Alpha over q0 [1, 1, .5], q1 [0, 1], q2 [0, 0, 0] (q3 has one verdict). Coincidences: q0 (weight 1/2):
    # o(1,1) 1, o(1,.5) 1, o(.5,1) 1; q1 (weight 1): o(0,1) 1, o(1,0) 1; q2 (weight 1/2): o(0,0) 3.
    # n_1 = 3, n_.5 = 1, n_0 = 4, n = 8. Observed sum o d^2 = .25 + .25 + 1 + 1 = 2.5. Expected sum n_c n_k d^2:
    # (1,.5) 3*1*.25 twice 1.5 + (1,0) 3*4*1 twice 24 + (.5,0) 1*4*.25 twice 2 = 27.5.
    # alpha = 1 - 7 * 2.5 / 27.5 = 1 - 7/11 = 4/11.
    assert out["krippendorff_alpha"] == pytest.approx(4 / 11)
    # The reward model (B's reward above A's: 1, below: 0, equal: .5): q0 1, q1 0, q2 .5, q3 0 -> 1.5/4.
    # Both decided (people's mean not .5, RM not .5): q0 (people 5/6 -> B, RM B: agree), q3 (people B, RM A:
    # disagree); q1 (people .5) and q2 (RM tie) drop out -> agreement 1/2 over 2 items.
    assert out["reward_model"] == {"win_rate_b": pytest.approx(0.375), "agreement_with_people": pytest.approx(0.5),
                                   "items_both_decided": 2}
    assert out["models"] == {"a": "policy-alpha", "b": "policy-beta"}


def test_report_without_rewards_or_labels(tmp_path):
    store = Store(str(tmp_path / "labels.sqlite"))
    with pytest.raises(ValueError, match="no A/B item has a label"):
        report(store)
    folder = tmp_path / "compare"
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", [{"id": 0, "prompt": "q0", "response_1": "B answers 0",
                                          "response_2": "A answers 0"}])
    (folder / "key.json").write_text(json.dumps({"a": "x", "b": "y", "items": [{"id": 0, "a": 2, "b": 1}]}))
    store.add_tasks(read_tasks(folder), needed=1, source="c")
    (p1,) = _annotators(store, "p1")
    _ab(store, p1, "q0", "b")
    out = report(store)
    assert out["human"] == {"items": 1, "win_rate_b": 1.0, "ci95": None}
    assert out["krippendorff_alpha"] is None and "reward_model" not in out
