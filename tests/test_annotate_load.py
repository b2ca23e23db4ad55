"""The real annotation server (`python -m jaxrlhf.annotate serve`, uvicorn over SQLite) under 16 scripted
annotators posting at once: every item ends with exactly `per_item` labels, no annotator labels an item twice,
and the labels stored are exactly the POSTs the clients saw acknowledged. Then the same while the server is
SIGKILLed mid-load: every acknowledged label survives the kill, and a restarted server finishes the job with
still exactly `per_item` labels per item.
"""

import http.client
import random
import threading
import time

import pytest

from jaxrlhf.feedback.scripted import ApiError, Client, annotate_all
from jaxrlhf.feedback.store import Store
from tests.helpers.annotate_server import AnnotateServer
from tests.helpers.data import write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ANNOTATORS, PER_ITEM = 16, 3
BOUND_S = 60.0  # every annotator thread must be done within this


class RecordingClient(Client):
    """The scripted annotator's client, noting the item (its prompt) of every label the server acknowledged."""

    def __init__(self, url, token, name):
        super().__init__(url, token, timeout=30.0)
        self.name, self.prompt_of, self.acknowledged = name, {}, []

    def next(self):
        answer = super().next()
        if answer["item"] is not None:
            self.prompt_of[answer["item"]["assignment"]] = answer["item"]["prompt"]
        return answer

    def label(self, body):
        answer = super().label(body)  # raises unless the server answered 200
        assert answer["stored"] is True
        self.acknowledged.append(self.prompt_of[body["assignment"]])
        return answer


def random_judge(seed):
    """A valid random ranking of the shown responses, seeded per annotator."""
    rng = random.Random(seed)

    def judge(item):
        order = list(range(1, len(item["responses"]) + 1))
        rng.shuffle(order)
        return {"order": order}

    return judge


class Annotator(threading.Thread):
    def __init__(self, client, seed, barrier):
        super().__init__(daemon=True)
        self.client, self.seed, self.barrier = client, seed, barrier
        self.stored, self.error = None, None

    def run(self):
        self.barrier.wait()  # all start posting at once
        try:
            self.stored = annotate_all(self.client, random_judge(self.seed))
        except (OSError, http.client.HTTPException, ApiError, ValueError) as e:  # the server went away
            self.error = e


def start_annotators(url, tokens, seed):
    barrier = threading.Barrier(len(tokens))
    threads = [Annotator(RecordingClient(url, token, name), seed * 100 + k, barrier)
               for k, (name, token) in enumerate(tokens.items())]
    for t in threads:
        t.start()
    return threads


def join(threads, deadline):
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"annotators still running after {BOUND_S} s"


def setup_db(tmp_path, items):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"prompt": f"load question {i}", "responses": [f"answer {i}.{k}" for k in range(2 + i % 3)]}
        for i in range(items)])
    db = tmp_path / "labels.sqlite"
    store = Store(str(db))
    tokens = {f"annotator{k:02d}": store.add_annotator(f"annotator{k:02d}") for k in range(ANNOTATORS)}
    store.db.close()
    return db, tasks, tokens


def stored_labels(db):
    """{prompt: [annotator, ...]} of every non-skipped label, and the list of (annotator, prompt) pairs."""
    store = Store(str(db))
    try:
        items = store.items_with_labels("rank")
        pairs = [(lab["annotator"], item["payload"]["prompt"]) for item in items for lab in item["labels"]]
        return {item["payload"]["prompt"]: [lab["annotator"] for lab in item["labels"]] for item in items}, pairs
    finally:
        store.db.close()


def acknowledged(threads):
    return [(t.client.name, prompt) for t in threads for prompt in t.client.acknowledged]


def assert_complete(by_item, pairs, items):
    assert len(by_item) == items
    assert {prompt: len(names) for prompt, names in by_item.items() if len(names) != PER_ITEM} == {}
    assert len(pairs) == len(set(pairs)) == items * PER_ITEM  # no (item, annotator) twice


def test_sixteen_annotators_at_once_leave_exactly_per_item_labels(tmp_path):
    items = 60
    db, tasks, tokens = setup_db(tmp_path, items)
    server = AnnotateServer(db, [tasks], per_item=PER_ITEM).start()
    try:
        deadline = time.monotonic() + BOUND_S
        threads = start_annotators(server.url, tokens, seed=1)
        join(threads, deadline)
    finally:
        server.stop()
    assert [t.error for t in threads if t.error] == []
    by_item, pairs = stored_labels(db)
    assert_complete(by_item, pairs, items)
    acked = acknowledged(threads)
    # none lost, none duplicated: the stored labels are the acknowledged POSTs, one for one
    assert sum(t.stored for t in threads) == len(acked) == len(pairs)
    assert sorted(acked) == sorted(pairs)
    assert sum(t.stored > 0 for t in threads) >= ANNOTATORS // 2  # the work was really shared
    assert "Traceback" not in server.tail(100_000)


def test_acknowledged_labels_survive_a_sigkill_mid_load(tmp_path):
    items = 150
    db, tasks, tokens = setup_db(tmp_path, items)
    server = AnnotateServer(db, [tasks], per_item=PER_ITEM).start()
    deadline = time.monotonic() + BOUND_S
    try:
        threads = start_annotators(server.url, tokens, seed=2)
        while len(acknowledged(threads)) < items * PER_ITEM // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        killed_at = len(acknowledged(threads))
        join(threads, deadline)
    finally:
        server.kill()
    first = set(acknowledged(threads))
    assert items * PER_ITEM // 3 <= killed_at < items * PER_ITEM, "the kill did not land mid-load"
    assert all(t.error is not None for t in threads), "an annotator finished although the server was killed"
    by_item, pairs = stored_labels(db)
    assert first <= set(pairs), f"acknowledged labels lost in the kill: {sorted(first - set(pairs))[:5]}"
    in_flight = set(pairs) - first  # stored, but the answer never reached the client: one POST each at most
    assert len(in_flight) <= ANNOTATORS and len(pairs) == len(set(pairs))
    assert all(len(names) <= PER_ITEM for names in by_item.values())

    server.start()  # the same SQLite file (and the same tasks: each is already stored)
    try:
        threads = start_annotators(server.url, tokens, seed=3)
        join(threads, time.monotonic() + BOUND_S)
    finally:
        server.stop()
    assert [t.error for t in threads if t.error] == []
    second = acknowledged(threads)
    assert len(second) == len(set(second)) and not first & set(second)
    by_item, pairs = stored_labels(db)
    assert_complete(by_item, pairs, items)
    assert set(pairs) == first | set(second) | in_flight
    assert len(pairs) == len(first) + len(second) + len(in_flight)
