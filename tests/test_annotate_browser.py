"""The annotation app (jaxrlhf/feedback) in a real browser: Debian's Chromium driven by Playwright.

Each test serves the app over its own SQLite file (tests/helpers/browser.py) and signs people in through the
/login form. The app shows each annotator the responses in their own shuffled order, so a test reads the
texts the page shows, presses the numbers of the responses it means, and checks what the store holds in
the responses' original order. The page's Content Security Policy forbids eval, so there is no
`wait_for_function`: waits are locator expectations, or `shown_item` polled until the page changes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from playwright.sync_api import expect

from jaxrlhf.feedback.export import export, report
from jaxrlhf.feedback.scripted import Client, annotate_all
from jaxrlhf.feedback.store import Store
from jaxrlhf.feedback.tasks import read_tasks
from jaxrlhf.rl.blind_ab import write_blind_ab
from tests.helpers import REPO_ROOT
from tests.helpers.browser import chromium_browser, serve_app
from tests.helpers.data import write_jsonl

NOTHING_LEFT = "Nothing left to label"
SCREENSHOT = REPO_ROOT / "docs" / "img" / "annotate_ranking.png"
WAIT_S = 5.0

# One read of the item on the page, so a re-render cannot fall between its parts.
_SHOWN = """() => ({
  heading: document.querySelector('#task h1') ? document.querySelector('#task h1').textContent : null,
  turns: [...document.querySelectorAll('#task .turn pre')].map(e => e.textContent),
  responses: [...document.querySelectorAll('#task .card pre.response')].map(e => e.textContent),
})"""


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as b:
        yield b


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "labels.sqlite"))


@pytest.fixture
def app(store):
    with serve_app(store) as url:
        yield url


@pytest.fixture
def sign_in(browser, app):
    """sign_in(token) -> a page signed in through the form, in its own browser context (one per person),
    its first item drawn; `on_response` sees every response from the start. Fails the test on any script
    error or Content Security Policy violation in those pages."""
    contexts, problems = [], []

    def open_page(token: str, viewport: dict | None = None, on_response=None):
        context = browser.new_context(viewport=viewport or {"width": 1200, "height": 900})
        context.set_default_timeout(WAIT_S * 1000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        if on_response is not None:
            page.on("response", on_response)
        page.goto(app + "/")
        page.fill("#token", token)
        page.press("#token", "Enter")
        expect(page.locator("header")).to_contain_text("Signed in as")
        if not page.url.endswith("/admin"):  # an admin lands on the admin page, with no item
            expect(page.locator("#task")).not_to_contain_text("Loading")
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not problems, problems


def rank_tasks(tmp_path, store, prompts_and_responses, per_item=1):
    """Writes a sample-style JSONL file, loads it as the CLI does; returns {prompt: responses in file order}."""
    path = write_jsonl(tmp_path / "samples.jsonl", [{"prompt": p, "responses": r} for p, r in prompts_and_responses])
    assert store.add_tasks(read_tasks(path), per_item, path)["added"] == len(prompts_and_responses)
    return {p: list(r) for p, r in prompts_and_responses}


def shown_item(page, previous: dict | None = None) -> dict:
    """{"heading", "turns", "responses" in display order} once an item (or "Nothing left") is drawn and,
    with `previous`, differs from it."""
    deadline = time.monotonic() + WAIT_S
    while True:
        item = page.evaluate(_SHOWN)
        drawn = item["heading"] == NOTHING_LEFT or (item["turns"] and item["responses"])
        if drawn and (previous is None or item["turns"] != previous["turns"]):
            return item
        assert time.monotonic() < deadline, f"the page did not move on from {previous}: {item}"
        time.sleep(0.02)


def display_numbers(item: dict, originals: list[str], best_first: list[int]) -> list[int]:
    """The numbers shown on the page (1-based, display order) of the original responses `best_first`."""
    return [item["responses"].index(originals[k]) + 1 for k in best_first]


def ranks_of(best_first: list[int]) -> list[int]:
    """ranks[k]: the 0-based rank of original response k."""
    ranks = [0] * len(best_first)
    for rank, k in enumerate(best_first):
        ranks[k] = rank
    return ranks


def ranking_numbers(page) -> list[int]:
    return page.locator("#ranking li").evaluate_all("els => els.map(e => Number(e.dataset.number))")


def labels_of(store: Store, prompt: str, kind: str = "rank") -> list[dict]:
    (item,) = [i for i in store.items_with_labels(kind) if i["payload"]["prompt"] == prompt]
    return item["labels"]


def rank_by_keys(page, tasks: dict, best_first: list[int]) -> dict:
    """Ranks the item on the page by digit keys (all but the last response), submits with Enter and waits
    for the next item (or "Nothing left"); returns the item it ranked. The app must place the last one itself."""
    item = shown_item(page)
    numbers = display_numbers(item, tasks[item["turns"][-1]], best_first)
    for number in numbers[:-1]:
        page.keyboard.press(f"Digit{number}")
    assert ranking_numbers(page) == numbers
    expect(page.locator("#ranking li.placed")).to_have_count(len(numbers))
    expect(page.locator("#submit")).to_be_enabled()
    page.keyboard.press("Enter")
    shown_item(page, previous=item)
    return item


def test_sign_in_with_the_keyboard_alone_and_a_wrong_token_shows_an_error(store, app, browser):
    token = store.add_annotator("alice")
    context = browser.new_context()
    context.set_default_timeout(WAIT_S * 1000)
    page = context.new_page()
    page.goto(app + "/")
    assert page.url == app + "/login"  # a signed-out visitor is sent to the form
    token_box = page.locator("#token")
    expect(token_box).to_be_focused()  # autofocus: typing needs no mouse (and typing before it would be lost)
    page.keyboard.type("not-a-token")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("That token is not known.")
    assert page.url == app + "/login"
    expect(token_box).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Tab")  # the button is the next stop, and Enter on it signs in
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("header")).to_contain_text("Signed in as alice")
    assert page.url == app + "/"
    expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
    context.close()


def test_rank_by_keys_and_by_drag_stores_ranks_in_original_order(tmp_path, store, sign_in):
    tasks = rank_tasks(tmp_path, store, [(f"question {w}", [f"{w} first", f"{w} second", f"{w} third"])
                                         for w in ("one", "two", "three", "four")])
    page = sign_in(store.add_annotator("alice"))
    for done, best_first in enumerate(([2, 0, 1], [0, 1, 2], [1, 2, 0]), 1):
        item = rank_by_keys(page, tasks, best_first)
        expect(page.locator("#progress")).to_contain_text(f"{done} labelled")
        (label,) = labels_of(store, item["turns"][-1])
        assert label["ranks"] == ranks_of(best_first), (item, best_first)

    # The fourth by dragging the entries of "Your ranking", then the Submit button.
    item = shown_item(page)
    entries = page.locator("#ranking li")
    assert ranking_numbers(page) == [1, 2, 3]
    entries.nth(0).drag_to(entries.nth(2))  # moving down lands after the target
    assert ranking_numbers(page) == [2, 3, 1]
    entries.nth(2).drag_to(entries.nth(1))  # moving up lands before it
    assert ranking_numbers(page) == [2, 1, 3]
    page.get_by_role("button", name="Submit (Enter)").click()
    expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
    expect(page.locator("#progress")).to_have_text("4 labelled · 0 left")  # a label, not a skip
    originals = tasks[item["turns"][-1]]
    best_first = [originals.index(item["responses"][n - 1]) for n in (2, 1, 3)]
    (label,) = labels_of(store, item["turns"][-1])
    assert label["ranks"] == ranks_of(best_first)


def test_reload_before_submitting_brings_back_the_same_item(tmp_path, store, sign_in):
    tasks = rank_tasks(tmp_path, store, [("first question", ["red", "green", "blue"]),
                                         ("second question", ["yes", "no", "maybe"])])
    page = sign_in(store.add_annotator("alice"))
    before = shown_item(page)
    page.keyboard.press("Digit2")
    expect(page.locator('.card[data-number="2"] .badge')).to_have_text("rank 1")
    page.reload()
    after = shown_item(page)
    assert after == before  # same prompt, same responses, in the same order: the lease is kept
    expect(page.locator(".card.marked")).to_have_count(0)  # the half-made ranking itself is not kept
    expect(page.locator("#progress")).to_contain_text("0 labelled")
    rank_by_keys(page, tasks, [1, 0, 2])
    following = shown_item(page)
    assert following["turns"] != before["turns"] and following["heading"] != NOTHING_LEFT
    (label,) = labels_of(store, before["turns"][-1])
    assert label["ranks"] == ranks_of([1, 0, 2])


def test_two_annotators_share_the_items_never_see_one_twice_and_each_ends_with_two_labels(tmp_path, store,
                                                                                          sign_in):
    tasks = rank_tasks(tmp_path, store, [(f"prompt {w}", [f"{w} a", f"{w} b", f"{w} c"])
                                         for w in ("red", "green", "blue")], per_item=2)
    people = {"alice": [0, 1, 2], "bob": [2, 1, 0]}
    pages = {name: sign_in(store.add_annotator(name)) for name in people}
    seen = {name: [] for name in people}
    for _ in tasks:  # in turns, so both hold leases on one item at once
        for name, page in pages.items():
            item = rank_by_keys(page, tasks, people[name])
            seen[name].append(item["turns"][-1])
    for name, page in pages.items():
        assert sorted(seen[name]) == sorted(tasks), (name, seen[name])  # every item once, none twice
        expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
    for item in store.items_with_labels("rank"):
        assert sorted(lab["annotator"] for lab in item["labels"]) == ["alice", "bob"]
        for lab in item["labels"]:
            assert lab["ranks"] == ranks_of(people[lab["annotator"]])
    # A third person finds nothing (each item has its 2 labels); the first still finds nothing after a reload.
    carol = sign_in(store.add_annotator("carol"))
    expect(carol.locator("#task h1")).to_have_text(NOTHING_LEFT)
    pages["alice"].reload()
    expect(pages["alice"].locator("#task h1")).to_have_text(NOTHING_LEFT)
    expect(pages["alice"].locator("#progress")).to_contain_text("3 labelled")


def test_enter_on_the_keyboard_help_opens_it_and_submits_nothing(tmp_path, store, sign_in):
    tasks = rank_tasks(tmp_path, store, [("a question", ["an answer", "another answer"])])
    page = sign_in(store.add_annotator("alice"))
    item = shown_item(page)
    page.keyboard.press(f"Digit{display_numbers(item, tasks['a question'], [0])[0]}")  # complete: Enter would send
    page.locator("details.help summary").focus()
    page.keyboard.press("Enter")
    expect(page.locator("details.help")).to_have_attribute("open", "")
    expect(page.locator("#progress")).to_contain_text("0 labelled")
    assert labels_of(store, "a question") == []


def test_unsafe_marks_and_comment_are_stored_in_original_order(tmp_path, store, sign_in):
    tasks = rank_tasks(tmp_path, store, [("tell me a joke", ["a kind joke", "a rude joke", "a cruel joke"])])
    originals = tasks["tell me a joke"]
    page = sign_in(store.add_annotator("alice"))
    item = shown_item(page)
    cruel, rude, kind = display_numbers(item, originals, [2, 1, 0])
    page.keyboard.press(f"Shift+Digit{cruel}")  # Shift+number marks a response unsafe
    page.keyboard.press(f"Shift+Digit{kind}")
    page.keyboard.press(f"Shift+Digit{kind}")  # and again unmarks it
    page.locator(f"#unsafe-{rude}").check()  # or its checkbox
    for number, checked in ((cruel, True), (rude, True), (kind, False)):
        expect(page.locator(f"#unsafe-{number}")).to_be_checked(checked=checked)
    page.keyboard.press(f"Digit{kind}")
    page.keyboard.press(f"Digit{rude}")
    comment = "second one is rude; 1 2 S s <b>not bold</b>"
    page.locator("#comment").click()
    page.keyboard.type(comment)  # digits and S typed into the comment stay in it: no re-ranking, no skip
    expect(page.locator("#comment")).to_have_value(comment)
    assert ranking_numbers(page) == [kind, rude, cruel]
    page.keyboard.press("Tab")
    expect(page.locator("#submit")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
    (label,) = labels_of(store, "tell me a joke")
    assert label["unsafe"] == [1, 2] and label["comment"] == comment and label["ranks"] == [0, 1, 2]


def test_skip_is_stored_and_the_item_does_not_come_back(tmp_path, store, sign_in):
    tasks = rank_tasks(tmp_path, store, [("skip me", ["one", "two"]), ("rank me", ["three", "four"])])
    token = store.add_annotator("alice")
    page = sign_in(token)
    skipped = shown_item(page)
    page.keyboard.press("s")
    expect(page.locator("#progress")).to_contain_text("1 skipped")
    kept = shown_item(page, previous=skipped)
    assert kept["turns"] != skipped["turns"]
    rank_by_keys(page, tasks, [1, 0])
    expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
    page.reload()  # the skipped item, still unlabelled, is not offered to alice again
    expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
    own = store.own_labels(store.annotator_by_token(token))
    assert [(lab["prompt"], lab["skipped"]) for lab in own] == [(skipped["turns"][-1], True),
                                                                (kept["turns"][-1], False)]
    assert labels_of(store, skipped["turns"][-1]) == []  # a skip is no label, so someone else still gets it
    bob = store.annotator_by_token(store.add_annotator("bob"))
    assert store.next_item(bob)["prompt"] == skipped["turns"][-1]


def test_markup_in_model_text_and_names_shows_as_literal_text(tmp_path, store, sign_in):
    script, img = "<script>window.pwned=1</script>", '<img src=x onerror="window.pwned=2">'
    prompt = "Write <b>bold</b> & <i>italic</i> HTML"
    rank_tasks(tmp_path, store, [(prompt, [script, img, "<u>underlined</u> &amp; done"])])
    page = sign_in(store.add_annotator("<i>eve</i>"))
    expect(page.locator(".card")).to_have_count(3)
    text = page.locator("#task").inner_text()
    for literal in (prompt, script, img, "<u>underlined</u> &amp; done"):
        assert literal in text
    assert page.locator("#ranking").inner_text().count("window.pwned") == 2  # the ranking's previews too
    assert page.locator("#task img, #task script, #task b, #task i, #task u").count() == 0
    assert page.locator("header strong").inner_text() == "<i>eve</i>"
    assert page.evaluate("window.pwned") is None
    # The admin page lists annotator names: escaped there too.
    admin = sign_in(store.add_annotator("boss", admin=True))
    assert admin.url.endswith("/admin")
    assert "<i>eve</i>" in admin.locator("table").nth(1).inner_text()
    assert admin.locator("table i").count() == 0


def test_export_has_consensus_ranks_and_hand_checked_agreement(tmp_path, store, sign_in):
    tasks = rank_tasks(tmp_path, store, [("alpha prompt", ["x1", "x2", "x3"]), ("beta prompt", ["y1", "y2", "y3"])],
                       per_item=2)
    prefs = {"alice": {"alpha prompt": [0, 1, 2], "beta prompt": [2, 1, 0]},
             "bob": {"alpha prompt": [1, 0, 2], "beta prompt": [2, 1, 0]}}
    out = tmp_path / "ranked.jsonl"
    for name, wanted in prefs.items():
        page = sign_in(store.add_annotator(name))
        for _ in tasks:
            rank_by_keys(page, tasks, wanted[shown_item(page)["turns"][-1]])
        expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
        if name == "alice":
            with pytest.raises(ValueError, match="no ranking item has all its labels"):
                export(store, out)  # one label of the two each item needs
    summary = export(store, out)
    rows = {r["prompt"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == set(tasks) and summary["rows"] == 2
    for prompt, row in rows.items():
        assert {"prompt", "responses", "ranks", "agreement"} <= set(row)
        assert row["responses"] == tasks[prompt] and row["annotators"] == 2
    # alpha: alice [0, 1, 2], bob [1, 0, 2]. Response pairs (0,1) discordant, (0,2) and (1,2) concordant:
    # tau = (2 - 1) / 3, agreement = (1 + 1/3) / 2 = 2/3; mean ranks [0.5, 0.5, 2] give dense ranks [0, 0, 1].
    assert rows["alpha prompt"]["agreement"] == pytest.approx(2 / 3)
    assert rows["alpha prompt"]["kendall_tau"] == pytest.approx(1 / 3)
    assert rows["alpha prompt"]["ranks"] == [0, 0, 1]
    # beta: both [2, 1, 0], i.e. ranks [2, 1, 0]: tau 1, agreement 1.
    assert rows["beta prompt"]["agreement"] == pytest.approx(1.0) and rows["beta prompt"]["ranks"] == [2, 1, 0]
    assert summary["mean_agreement"] == pytest.approx((2 / 3 + 1) / 2)


def test_blind_ab_session_never_shows_the_key_and_the_report_matches_a_hand_count(tmp_path, store, sign_in):
    prompts = ["what is a cat", "what is a dog", "what is a fish", "what is a bird"]
    responses_a = ["a cat purrs", "a dog barks", "a fish swims", "a bird sings"]
    responses_b = ["cats are small", "dogs are loyal", "fish have fins", "birds have wings"]
    label_of_a = np.array([1, 2, 2, 1])
    rewards_a, rewards_b = [0.1137, 0.9137, 0.4137, 0.2137], [0.8137, 0.3137, 0.4137, 0.6137]
    secrets = ["zebrafish", "walrus", "reward", "0.1137", "0.8137", "0.9137", "0.3137", "0.6137", "0.2137"]
    folder = write_blind_ab(tmp_path / "compare", prompts, responses_a, responses_b, label_of_a,
                            key_meta={"a": "zebrafish-sft-v3", "b": "walrus-ppo-v9"},
                            key_per_item={"reward_a": rewards_a, "reward_b": rewards_b})
    store.add_tasks(read_tasks(folder), 1, str(folder))
    bodies = []  # every /api/next answer this browser gets (no navigation after sign-in drops their bodies)
    page = sign_in(store.add_annotator("alice"), on_response=lambda r: bodies.append(r)
                   if r.url.endswith("/api/next") else None)
    keys = {"Digit1": "1", "Digit2": "2", "t": "tie"}
    scores, counts = [], {"a": 0, "b": 0, "tie": 0}
    for key in ("Digit1", "Digit2", "t", "Digit2"):
        item = shown_item(page)
        content = page.content()
        assert not [s for s in secrets if s in content]
        page.keyboard.press(key)
        expect(page.locator(f'#choice-{keys[key]}')).to_have_attribute("aria-pressed", "true")
        page.keyboard.press("Enter")
        shown_item(page, previous=item)
        # By hand: who wrote the response at the position pressed, from the page's text and the key.
        i = prompts.index(item["turns"][-1])
        side = "tie" if key == "t" else ("a" if item["responses"][int(keys[key]) - 1] == responses_a[i] else "b")
        counts[side] += 1
        scores.append({"a": 0.0, "tie": 0.5, "b": 1.0}[side])
    expect(page.locator("#task h1")).to_have_text(NOTHING_LEFT)
    own = page.request.get(page.url.rstrip("/") + "/api/labels").text()
    for text in [b.text() for b in bodies] + [own]:
        assert not [s for s in secrets if s in text], text
    items = [json.loads(b.text())["item"] for b in bodies]
    assert len(items) == 5 and items[-1] is None  # four items, then nothing
    assert all(set(it) == {"assignment", "kind", "prompt", "turns", "responses"} for it in items[:-1])

    result = report(store)
    mean = sum(scores) / len(scores)
    half = 1.96 * math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) / math.sqrt(len(scores))
    assert result["verdicts"] == counts
    assert result["human"]["items"] == 4 and result["human"]["win_rate_b"] == pytest.approx(mean)
    assert result["human"]["ci95"] == pytest.approx([max(0.0, mean - half), min(1.0, mean + half)])
    # The reward model prefers B on items 0 and 3, A on item 1, neither on item 2 (equal rewards).
    assert result["reward_model"]["win_rate_b"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert result["models"] == {"a": "zebrafish-sft-v3", "b": "walrus-ppo-v9"}


def test_hh_dialogue_shows_as_turns_and_ranking_page_screenshot(tmp_path, store, sign_in):
    """Writes docs/img/annotate_ranking.png only under JAXRLHF_SCREENSHOT=1 (a tracked file); else into tmp."""
    prompt = ("\n\nHuman: My neighbour's dog barks all night. What can I do about it?"
              "\n\nAssistant: That sounds exhausting. Have you been able to talk to your neighbour about it yet?"
              "\n\nHuman: Not yet. How should I bring it up without starting a fight?\n\nAssistant:")
    responses = [
        "Pick a calm moment, not the middle of the night. Start with something friendly, say how the barking "
        "affects your sleep, and ask whether they have noticed it. People often don't know their dog barks "
        "when they are away. You could suggest a few options together, like a trainer or keeping the dog "
        "inside at night.",
        "Just call the police every time it barks. That will teach them.",
        "You could write them a short, polite note if talking face to face feels hard. Mention the times it "
        "happens and that you'd appreciate anything they can do.",
    ]
    rank_tasks(tmp_path, store, [(prompt, responses)])
    page = sign_in(store.add_annotator("alice"), viewport={"width": 1280, "height": 800})
    item = shown_item(page)
    assert [t.strip() for t in item["turns"]] == [
        "My neighbour's dog barks all night. What can I do about it?",
        "That sounds exhausting. Have you been able to talk to your neighbour about it yet?",
        "Not yet. How should I bring it up without starting a fight?"]
    expect(page.locator(".turn")).to_have_count(3)
    assert page.locator(".turn .role").all_text_contents() == ["user", "assistant", "user"]
    page.keyboard.press(f"Digit{display_numbers(item, responses, [0])[0]}")  # one placed: its badge shows
    page.mouse.move(0, 0)
    shot = tmp_path / "annotate_ranking.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("JAXRLHF_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


@pytest.mark.slow  # trains a model
@pytest.mark.multiprocess  # the train_rm command line
def test_exported_rankings_train_a_reward_model_filtered_by_agreement(tmp_path, store):
    from tests.helpers.models import make_tiny_llama_dir
    from tests.helpers.runs import complete_steps, rm_cli_args

    # Words the tiny tokenizer knows; "good" marks the better response. Two annotators label over the API
    # (the browser's own endpoints, with a bearer token); bob swaps the top two on every fifth item.
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    rank_tasks(tmp_path, store, [(f"hello {a} {b}", [f"good good {a}", f"good bad {b}", f"bad bad {a} {b}"])
                                 for a in words for b in words[:4]], per_item=2)
    swapped = {f"hello {a} {b}" for k, a in enumerate(words) for b in words[:4] if (4 * k + words.index(b)) % 5 == 0}

    def judge(noisy):
        def rank(item):
            order = sorted(range(3), key=lambda n: -item["responses"][n].split().count("good"))
            if noisy and item["prompt"] in swapped:
                order[0], order[1] = order[1], order[0]
            return {"order": [n + 1 for n in order]}
        return rank

    with serve_app(store) as url:
        for name, noisy in (("alice", False), ("bob", True)):
            assert annotate_all(Client(url, store.add_annotator(name)), judge(noisy)) == 40
    data = tmp_path / "ranked.jsonl"
    assert export(store, data)["rows"] == 40
    assert sum(json.loads(line)["agreement"] < 0.9 for line in data.read_text().splitlines()) == len(swapped) == 8
    model, work = make_tiny_llama_dir(tmp_path / "model"), tmp_path / "work"
    args = rm_cli_args(model, data, work, {"train.epochs": 1, "data.min_agreement": 0.9})
    out = subprocess.run(args, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf")))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "filtered/low_agreement=8" in out.stdout, out.stdout[-3000:]  # the 8 items bob disagreed on
    # 32 lists of 3 untied responses kept (96 pairs); 16 lists (48 pairs) held out, 48 pairs in batches of 8.
    assert "pairs: 48 train, 48 held out" in out.stdout and "kept=96" in out.stdout, out.stdout[-3000:]
    assert complete_steps(work / "checkpoints")[-1] == 6
    # The exported ranks point the right way: the held-out "good" responses win (flipped ranks give ~0).
    assert json.loads((work / "eval.json").read_text())["accuracy"] > 0.8
