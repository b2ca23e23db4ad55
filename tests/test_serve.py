"""The reward-model server (jaxrlhf.rm.serving, jaxrlhf.rm.batcher): scores as `jaxrlhf.score` scores, batches
concurrent requests, answers OpenRLHF's remote-RM request, and turns every bad request into a JSON error."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from jaxrlhf.rm.batcher import Batcher
from jaxrlhf.rm.serving import BadRequest, openrlhf_rows, score_rows

PAIRS = [("one two", " good red"), ("three four five", " bad blue"), ("", "hello good world"),
         ("what why", " yes bad no"), ("a b c", " good good")]


# ---- the batcher and the request parsing, without a model (quick tier) ----

def _recording_score(calls, delay=0.0):
    def score(rows):
        calls.append(len(rows))
        time.sleep(delay)
        return np.array([float(r) for r in rows], np.float32)
    return score


def test_batcher_routes_each_request_its_own_rewards_in_order():
    calls = []
    batcher = Batcher(_recording_score(calls, delay=0.02), max_batch=8, max_wait_s=0.05)
    futures = [batcher.submit([i * 10 + j for j in range(i % 3 + 1)]) for i in range(12)]
    for i, f in enumerate(futures):
        assert f.result(5).tolist() == [i * 10 + j for j in range(i % 3 + 1)]
    batcher.close()
    stats = batcher.snapshot()
    assert stats["requests"] == 12 and stats["rows"] == sum(i % 3 + 1 for i in range(12))
    assert stats["multi_request_batches"] >= 1 and max(calls) <= 8  # batched, never past max_batch


def test_batcher_sends_a_large_request_alone_and_survives_a_failing_score():
    calls = []

    def score(rows):
        calls.append(len(rows))
        if "boom" in rows:
            raise RuntimeError("bad row")
        return np.zeros(len(rows), np.float32)

    batcher = Batcher(score, max_batch=2, max_wait_s=0.0)
    assert batcher.submit(list("abcde")).result(5).shape == (5,)
    with pytest.raises(RuntimeError, match="bad row"):
        batcher.submit(["boom"]).result(5)
    assert batcher.submit(["x"]).result(5).tolist() == [0.0]
    batcher.close()
    assert batcher.snapshot()["errors"] == 1
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(["late"]).result(5)


def test_request_parsing_and_its_errors():
    assert score_rows({"texts": ["a b"]}) == [("", "a b")]
    assert score_rows({"pairs": [{"prompt": "p", "response": " r"}, {"response": "s"}]}) == [("p", " r"), ("", "s")]
    for body, message in [({"texts": []}, "non-empty list"), ({"texts": ["a", 3]}, "texts[1] must be a string"),
                          ({"texts": ["  "]}, "texts[0] is empty"), ({"text": ["a"]}, "unknown field 'text'"),
                          ({}, "no texts"), ({"texts": ["a"], "pairs": []}, "both"),
                          ({"pairs": [{"prompt": "p"}]}, "pairs[0].response must be a string"),
                          ({"pairs": [{"response": "r", "score": 1}]}, "unknown field 'score'")]:
        with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
            score_rows(body)

    class Tok:
        pad_token, eos_token = "<pad>", "</s>"

    rows = openrlhf_rows({"query": ["<pad><pad>one two good</s>", "red"], "prompts": ["<pad><pad>one two", "x"],
                          "labels": [None, None]}, Tok())
    assert rows == [("one two", " good"), ("", "red")]
    with pytest.raises(BadRequest, match="'prompts' has 1 entries for 2 queries"):
        openrlhf_rows({"query": ["a", "b"], "prompts": ["a"]}, Tok())


# ---- a tiny trained RM behind the app ----

@pytest.fixture(scope="module")
def rm_export(tmp_path_factory):
    from tests.helpers.runs import make_tiny_rm_export

    return make_tiny_rm_export(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def expected(rm_export):
    """What `python -m jaxrlhf.score` prints for PAIRS (rounded) and the same scorer's unrounded rewards."""
    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.rm.texts import score_texts

    rows = score_texts(str(rm_export), PAIRS, max_length=64)
    scorer = load_trained_rm(str(rm_export)).scorer(64)
    raw = scorer.score_encoded(scorer.encode_raw([p for p, _ in PAIRS], [r for _, r in PAIRS]))
    return rows, raw


def _app(rm_export, **kw):
    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.rm.serving import create_app

    return create_app(load_trained_rm(str(rm_export)), model_name="tiny", max_length=64, **kw)


@pytest.fixture(scope="module")
def client(rm_export):
    from starlette.testclient import TestClient

    with TestClient(_app(rm_export, max_request_bytes=4096, token="s3cret")) as c:
        c.headers["Authorization"] = "Bearer s3cret"
        yield c


@pytest.mark.slow  # trains the tiny RM (module fixture)
def test_score_matches_jaxrlhf_score(client, expected):
    rows, raw = expected
    out = client.post("/score", json={"pairs": [{"prompt": p, "response": r} for p, r in PAIRS]})
    assert out.status_code == 200, out.text
    body = out.json()
    np.testing.assert_allclose(body["rewards"], raw, atol=1e-5)
    np.testing.assert_allclose(np.round(body["rewards"], 4), [r["reward"] for r in rows], atol=1e-5 + 1e-4 / 2)
    assert "normalised" in rows[0]  # the tiny export has reward statistics: the server normalises as score does
    np.testing.assert_allclose(body["normalised"], [r["normalised"] for r in rows], atol=1e-4)
    texts = client.post("/score", json={"texts": [p + r for p, r in PAIRS]}).json()["rewards"]
    np.testing.assert_allclose(texts[2], raw[2], atol=1e-5)  # no prompt: the same text as ("", text)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["normalised"] is True


@pytest.mark.slow
def test_openrlhf_request_gets_openrlhf_answer(client, expected):
    _, raw = expected
    queries = [p + r for p, r in PAIRS]
    out = client.post("/get_reward", json={"query": queries, "prompts": [p for p, _ in PAIRS],
                                           "labels": [""] * len(PAIRS)})
    assert out.status_code == 200, out.text
    body = out.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    np.testing.assert_allclose(body["rewards"], raw, atol=1e-5)
    assert body["scores"] == body["rewards"]
    old = client.post("/get_reward?token=s3cret", json={"query": queries[2:3]}, headers={"Authorization": ""})
    np.testing.assert_allclose(old.json()["rewards"], raw[2:3], atol=1e-5)  # the query-only client, token in URL


@pytest.mark.slow
def test_bad_requests_get_their_status_and_a_one_line_error(client, expected):
    _, raw = expected
    cases = [
        (dict(json={"texts": []}), 400, "'texts' must be a non-empty list"),
        (dict(json={"texts": ["one", 2]}), 400, "texts[1] must be a string, got int"),
        (dict(json={"prompt": "one"}), 400, "unknown field 'prompt'"),
        (dict(content=b'{"texts": ["one"'), 400, "body is not valid JSON: Expecting"),
        (dict(content=b"\xff\xfe"), 400, "body is not valid JSON"),
        (dict(json=["one"]), 400, "body must be a JSON object"),
        (dict(json={"texts": ["one two " * 600]}), 413, "over the limit of 4096"),
        (dict(content=iter([b'{"texts": ["' + b"one " * 600, b"two " * 600 + b'"]}'])), 413,  # chunked, no length
         "request body is over the limit of 4096"),
        (dict(json={"texts": ["one"]}, headers={"Authorization": ""}), 401, "missing or wrong token"),
        (dict(json={"texts": ["one"]}, headers={"Authorization": "Bearer nope"}), 401, "missing or wrong token"),
    ]
    for kwargs, status, message in cases:
        out = client.post("/score", **kwargs)
        assert out.status_code == status, (kwargs, out.text)
        error = out.json()["error"]
        assert message in error and "\n" not in error and "Traceback" not in error, error
    assert client.get("/health", headers={"Authorization": ""}).status_code == 401
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.post("/get_reward", json={"prompts": ["a"]}).json() == {
        "error": "'query' must be a non-empty list of strings"}
    good = client.post("/score", json={"pairs": [{"prompt": PAIRS[0][0], "response": PAIRS[0][1]}]})
    assert good.status_code == 200
    np.testing.assert_allclose(good.json()["rewards"], raw[:1], atol=1e-5)


@pytest.mark.slow
def test_real_server_batches_32_concurrent_clients(rm_export, expected):
    import uvicorn

    from tests.helpers.processes import free_port

    _, raw = expected
    app = _app(rm_export, max_batch=32, max_wait_ms=50)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started

    def post(path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def client(i):  # each client asks for a few requests of one or two texts
        answers = []
        for k in range(3):
            picks = [(i + k) % len(PAIRS), (i * 7 + k) % len(PAIRS)][: 1 + (i + k) % 2]
            body = {"pairs": [{"prompt": PAIRS[j][0], "response": PAIRS[j][1]} for j in picks]}
            answers.append((picks, post("/score", body)["rewards"]))
        return answers

    try:
        post("/score", {"texts": ["one"]})  # compiled before the clock starts
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(client, range(32)))
        assert time.monotonic() - start < 60
        for answers in results:
            for picks, rewards in answers:
                np.testing.assert_allclose(rewards, raw[picks], atol=1e-5)
        stats = post("/get_reward", {"query": ["one two good"]})  # the OpenRLHF route over real HTTP too
        assert set(stats) == {"rewards", "scores", "extra_logs"}
        batching = app.state.batcher.snapshot()
        assert batching["requests"] == 32 * 3 + 2
        assert batching["multi_request_batches"] >= 1 and batching["max_requests_per_batch"] > 1, batching
        assert batching["batches"] < batching["requests"]
    finally:
        server.should_exit = True
        thread.join(30)
