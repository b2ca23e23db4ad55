"""The annotation app's HTTP API and pages (jaxrlhf/feedback/app.py) through Starlette's TestClient: sign-in,
rate limit, CSRF, assignment and replay checks, body limits, label validation, what each annotator can see
(never the A/B key), errors without tracebacks, security headers; and the task files, the database schema
and `python -m jaxrlhf.annotate load` refusing bad input before storing anything.

Every refused request is also checked to have stored nothing.
"""

import collections
import json
import re
import sqlite3
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient

from jaxrlhf.feedback import store as store_module
from jaxrlhf.feedback.app import LOGIN_COOKIE, SESSION_COOKIE, create_app
from jaxrlhf.feedback.store import LabelError, Store
from jaxrlhf.feedback.tasks import TaskFileError, read_tasks
from tests.helpers import REPO_ROOT
from tests.helpers.data import write_jsonl
from tests.helpers.processes import cpu_env

RANK_ROWS = [{"prompt": f"rank question {i}", "responses": [f"first {i}", f"second {i}", f"third {i}"]}
             for i in range(3)]
MODEL_A, MODEL_B = "policy-alpha-7f3k", "policy-beta-9q2z"
REWARDS = {0: (0.123456, 7.654321), 1: (-3.217, 2.991)}


class Env:
    def __init__(self, tmp_path, **app_kwargs):
        self.tmp = tmp_path
        self.store = Store(str(tmp_path / "labels.sqlite"))
        rank = write_jsonl(tmp_path / "rank.jsonl", RANK_ROWS)
        self.store.add_tasks(read_tasks(rank), needed=2, source=rank)
        self.store.add_tasks(read_tasks(write_compare(tmp_path / "compare")), needed=2, source="compare")
        self.alice, self.bob = self.store.add_annotator("alice"), self.store.add_annotator("bob")
        self.boss = self.store.add_annotator("boss", admin=True)
        self.app = create_app(self.store, **app_kwargs)
        self.client = TestClient(self.app)

    def labels(self) -> int:
        return self.store.db.one("SELECT COUNT(*) FROM labels")[0]

    def client_for(self, token=None, **kwargs) -> TestClient:
        client = TestClient(self.app, **kwargs)
        if token:
            client.headers["Authorization"] = f"Bearer {token}"
        return client


def write_compare(folder):
    """A `jaxrlhf.compare` output folder of two A/B items whose key holds model names and rewards."""
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", [{"id": i, "prompt": f"ab question {i}", "response_1": f"left {i}",
                                          "response_2": f"right {i}"} for i in range(2)])
    key = {"a": MODEL_A, "b": MODEL_B, "summary": {"mean_reward_a": 1.5},
           "items": [{"id": i, "a": 1 + i % 2, "b": 2 - i % 2, "reward_a": ra, "reward_b": rb, "length_a": 11,
                      "length_b": 13} for i, (ra, rb) in REWARDS.items()]}
    (folder / "key.json").write_text(json.dumps(key))
    return folder


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def sign_in(env, client, token) -> str:
    """Signs `client` in through the login form; returns the session's CSRF token."""
    assert client.get("/login").status_code == 200
    nonce = client.cookies.get(LOGIN_COOKIE)
    assert nonce
    r = client.post("/login", data={"csrf": nonce, "token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return env.store.session(client.cookies.get(SESSION_COOKIE))[1]


def rank_body(item, **extra):
    return {"assignment": item["assignment"], "order": list(range(1, len(item["responses"]) + 1)), **extra}


def next_item(client, token=None):
    r = client.get("/api/next", headers=bearer(token) if token else {})
    assert r.status_code == 200, r.text
    return r.json()["item"]


# Sign-in.

def test_every_page_and_api_route_needs_sign_in(env):
    client = env.client
    for path in ("/", "/admin"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in ("/api/next", "/api/labels", "/api/admin/summary"):
        r = client.get(path)
        assert r.status_code == 401 and "sign in" in r.json()["error"], path
    item = next_item(client, env.alice)
    r = client.post("/api/label", json=rank_body(item))  # a real assignment, but no credentials
    assert r.status_code == 401
    # an unknown session cookie is no sign-in either
    client.cookies.set(SESSION_COOKIE, "made-up-session")
    assert client.get("/api/next").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert client.post("/api/label", json=rank_body(item), headers={"X-CSRF-Token": "x"}).status_code == 401
    assert env.labels() == 0
    # a page is for a signed-in browser: a bearer token alone is sent to the login page
    assert env.client_for(env.alice).get("/", follow_redirects=False).headers["location"] == "/login"
    assert TestClient(env.app).get("/login").status_code == 200


def test_wrong_bearer_token_is_401(env):
    client = env.client
    r = client.get("/api/next", headers=bearer("not-a-token"))
    assert r.status_code == 401 and r.json() == {"error": "wrong token"}
    assert client.get("/api/next", headers=bearer(env.alice + "x")).status_code == 401
    assert client.get("/api/next", headers=bearer(env.alice)).status_code == 200


def test_sign_in_rate_limit_refuses_even_a_right_token(tmp_path):
    env = Env(tmp_path, sign_in_attempts=3, sign_in_window_s=0.5)
    client = env.client
    for _ in range(3):
        assert client.get("/api/next", headers=bearer("wrong")).status_code == 401
    r = client.get("/api/next", headers=bearer("wrong"))
    assert r.status_code == 429 and "too many failed sign-ins" in r.json()["error"]
    assert client.get("/api/next", headers=bearer(env.alice)).status_code == 429
    assert TestClient(env.app).get("/api/next", headers=bearer(env.alice)).status_code == 429  # same address
    # the login form counts the same failures per address
    client.get("/login")
    r = client.post("/login", data={"csrf": client.cookies.get(LOGIN_COOKIE), "token": env.alice},
                    follow_redirects=False)
    assert r.status_code == 429 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    time.sleep(0.6)  # the window has passed
    assert client.get("/api/next", headers=bearer(env.alice)).status_code == 200


def test_login_form_rate_limit(tmp_path):
    env = Env(tmp_path, sign_in_attempts=2)
    client = env.client
    for _ in range(2):
        client.get("/login")
        r = client.post("/login", data={"csrf": client.cookies.get(LOGIN_COOKIE), "token": "wrong"},
                        follow_redirects=False)
        assert r.status_code == 401 and "not known" in r.text
    client.get("/login")
    r = client.post("/login", data={"csrf": client.cookies.get(LOGIN_COOKIE), "token": env.alice},
                    follow_redirects=False)
    assert r.status_code == 429 and not client.cookies.get(SESSION_COOKIE)
    assert env.store.db.one("SELECT COUNT(*) FROM sessions")[0] == 0


def test_login_needs_the_login_cookie_and_its_nonce(env):
    client = TestClient(env.app)
    r = client.post("/login", data={"csrf": "guess", "token": env.alice}, follow_redirects=False)  # no cookie
    assert r.status_code == 403 and not client.cookies.get(SESSION_COOKIE)
    r = client.post("/login", data={"token": env.alice}, follow_redirects=False)
    assert r.status_code == 403
    client.get("/login")
    r = client.post("/login", data={"csrf": "wrong-nonce", "token": env.alice}, follow_redirects=False)
    assert r.status_code == 403 and not client.cookies.get(SESSION_COOKIE)
    # another browser's nonce does not fit this browser's cookie
    other = TestClient(env.app)
    other.get("/login")
    client.get("/login")
    r = client.post("/login", data={"csrf": other.cookies.get(LOGIN_COOKIE), "token": env.alice},
                    follow_redirects=False)
    assert r.status_code == 403
    assert env.store.db.one("SELECT COUNT(*) FROM sessions")[0] == 0
    # the right pair signs in, admins land on /admin
    client.get("/login")
    r = client.post("/login", data={"csrf": client.cookies.get(LOGIN_COOKIE), "token": env.alice},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    boss = TestClient(env.app)
    boss.get("/login")
    r = boss.post("/login", data={"csrf": boss.cookies.get(LOGIN_COOKIE), "token": env.boss}, follow_redirects=False)
    assert r.headers["location"] == "/admin"


def test_cookies_are_httponly_and_samesite_strict(env):
    r = env.client.get("/login")
    assert re.search(r"(?i)jaxrlhf_login=[^;]+;.*httponly", r.headers["set-cookie"])
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    r = env.client.post("/login", data={"csrf": env.client.cookies.get(LOGIN_COOKIE), "token": env.alice},
                        follow_redirects=False)
    session_cookie = [c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")]
    assert session_cookie and "httponly" in session_cookie[0].lower()
    assert "samesite=strict" in session_cookie[0].lower()
    # the token itself is not what the cookie holds
    assert env.alice not in session_cookie[0]


# CSRF.

def test_cookie_post_needs_the_csrf_token(env):
    client = env.client
    csrf = sign_in(env, client, env.alice)
    item = next_item(client)  # a GET with the cookie needs no CSRF token
    assert client.post("/api/label", json=rank_body(item)).status_code == 403
    r = client.post("/api/label", json=rank_body(item), headers={"X-CSRF-Token": "wrong"})
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    other_csrf = sign_in(env, TestClient(env.app), env.alice)  # the same person's other session
    assert client.post("/api/label", json=rank_body(item), headers={"X-CSRF-Token": other_csrf}).status_code == 403
    assert env.labels() == 0
    r = client.post("/api/label", json=rank_body(item), headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["stored"] is True
    assert env.labels() == 1


def test_logout_needs_csrf_and_ends_the_session(env):
    client = env.client
    csrf = sign_in(env, client, env.alice)
    r = client.post("/logout", data={"csrf": "wrong"}, follow_redirects=False)
    assert r.status_code == 403
    assert client.get("/api/next").status_code == 200  # still signed in
    session = client.cookies.get(SESSION_COOKIE)
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert env.store.session(session) is None
    client.cookies.set(SESSION_COOKIE, session)  # a kept copy of the cookie no longer works
    assert client.get("/api/next").status_code == 401


# Assignments, replays, bodies.

def test_label_for_an_item_not_assigned_to_you_is_404(env):
    alice_item = next_item(env.client, env.alice)
    bob = env.client_for(env.bob)
    bob_item = next_item(bob)
    r = bob.post("/api/label", json=rank_body(alice_item))
    assert r.status_code == 404 and "no such assignment" in r.json()["error"]
    assert bob.post("/api/label", json=rank_body(alice_item, assignment="made-up-nonce")).status_code == 404
    assert bob.post("/api/label", json={"order": [1, 2, 3]}).status_code == 400  # no assignment at all
    assert env.labels() == 0
    # the assignments still work for their own annotators
    assert bob.post("/api/label", json=rank_body(bob_item)).status_code == 200
    assert env.client.post("/api/label", json=rank_body(alice_item), headers=bearer(env.alice)).status_code == 200
    assert env.labels() == 2


def test_replayed_post_is_409_and_stored_once(env):
    client = env.client_for(env.alice)
    item = next_item(client)
    body = rank_body(item, comment="first")
    assert client.post("/api/label", json=body).status_code == 200
    r = client.post("/api/label", json=body)
    assert r.status_code == 409 and "already labelled" in r.json()["error"]
    assert client.post("/api/label", json=dict(body, order=[3, 2, 1])).status_code == 409  # a changed replay
    assert env.labels() == 1
    labels = client.get("/api/labels").json()["labels"]
    assert len(labels) == 1 and labels[0]["comment"] == "first"
    assert next_item(client)["assignment"] != item["assignment"]  # the next item is a new one


def test_oversized_bodies_are_413(tmp_path):
    env = Env(tmp_path, max_request_bytes=1000)
    client = env.client_for(env.alice)
    item = next_item(client)
    big = json.dumps(rank_body(item, comment="x" * 1500)).encode()  # a valid label (comments may be 2000)
    assert len(big) > 1000
    r = client.post("/api/label", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]

    def chunks():
        for k in range(0, len(big), 100):
            yield big[k:k + 100]

    request = client.build_request("POST", "/api/label", content=chunks(), headers={"Content-Type":
                                                                                     "application/json"})
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    r = client.send(request)
    assert r.status_code == 413
    # a client that declares a small body and sends more
    r = client.post("/api/label", content=big, headers={"Content-Type": "application/json", "Content-Length": "10"})
    assert r.status_code in (400, 413)
    assert env.labels() == 0
    small = rank_body(item, comment="x" * 800)
    assert len(json.dumps(small)) < 1000
    assert client.post("/api/label", json=small).status_code == 200
    assert env.labels() == 1


RANK_BAD = [
    ({"order": [1, 1, 2]}, "order"),
    ({"order": [1, 2]}, "order"),
    ({"order": [1, 2, 3, 4]}, "order"),
    ({"order": [0, 1, 2]}, "order"),
    ({"order": [True, 2, 3]}, "order"),  # True == 1 in Python: a boolean is not a response number
    ({"order": [1.0, 2.0, 3.0]}, "order"),
    ({"order": [1, "2", 3]}, "order"),
    ({"order": None}, "order"),
    ({"order": "123"}, "order"),
    ({"unsafe": [4]}, "unsafe"),
    ({"unsafe": [0]}, "unsafe"),
    ({"unsafe": [True]}, "unsafe"),
    ({"unsafe": [1, 1]}, "unsafe"),
    ({"unsafe": 1}, "unsafe"),
    ({"comment": "x" * (store_module.MAX_COMMENT_CHARS + 1)}, "comment"),
    ({"comment": 5}, "comment"),
    ({"skip": "yes"}, "skip"),
    ({"skip": 1}, "skip"),
]
AB_BAD = [({"choice": "3"}, "choice"), ({"choice": 1}, "choice"), ({"choice": "A"}, "choice"),
          ({"choice": None}, "choice"), ({"choice": ["1"]}, "choice"), ({"choice": {"x": 1}}, "choice"),
          ({"order": [1, 2]}, "choice"), ({"choice": "1", "unsafe": [3]}, "unsafe")]


def test_malformed_label_bodies_are_400(env):
    client = env.client_for(env.alice)
    item = next_item(client)
    assert item["kind"] == "rank"
    for change, field in RANK_BAD:
        r = client.post("/api/label", json=dict(rank_body(item), **change))
        assert r.status_code == 400 and r.json()["error"].startswith(field), (change, r.text)
    for raw in (b"{not json", b"[1, 2, 3]", b'"text"', b"\xff\xfe"):
        r = client.post("/api/label", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "body" in r.json()["error"], raw
    assert env.labels() == 0
    assert client.post("/api/label", json=rank_body(item)).status_code == 200  # the assignment is still open


def test_malformed_ab_bodies_are_400(env):
    client = env.client_for(env.alice)
    for _ in range(3):  # the three ranking items come first
        assert client.post("/api/label", json=rank_body(next_item(client))).status_code == 200
    item = next_item(client)
    assert item["kind"] == "ab"
    for change, field in AB_BAD:
        r = client.post("/api/label", json=dict({"assignment": item["assignment"]}, **change))
        assert r.status_code == 400 and r.json()["error"].startswith(field), (change, r.text)
    assert env.labels() == 3
    assert client.post("/api/label", json={"assignment": item["assignment"], "choice": "tie"}).status_code == 200


def test_each_annotator_sees_only_their_own_labels(env):
    alice, bob = env.client_for(env.alice), env.client_for(env.bob)
    item = next_item(alice)
    assert alice.post("/api/label", json=rank_body(item, comment="alice was here")).status_code == 200
    item = next_item(alice)
    assert alice.post("/api/label", json={"assignment": item["assignment"], "skip": True}).status_code == 200
    item = next_item(bob)
    assert bob.post("/api/label", json=rank_body(item, order=[3, 1, 2], comment="bob")).status_code == 200
    mine = alice.get("/api/labels").json()
    assert mine["annotator"] == "alice" and [lab["comment"] for lab in mine["labels"]] == ["alice was here", ""]
    assert [lab["skipped"] for lab in mine["labels"]] == [False, True]
    theirs = bob.get("/api/labels").json()
    assert theirs["annotator"] == "bob" and [lab["comment"] for lab in theirs["labels"]] == ["bob"]
    assert "alice" not in json.dumps(theirs)
    assert env.client_for(env.boss).get("/api/labels").json()["labels"] == []


def test_the_ab_key_never_reaches_an_annotator(env):
    client = env.client_for(env.alice)
    seen, kinds = [], []
    while True:
        r = client.get("/api/next")
        seen.append(r.text)
        item = r.json()["item"]
        if item is None:
            break
        kinds.append(item["kind"])
        body = rank_body(item) if item["kind"] == "rank" else {"assignment": item["assignment"], "choice": "2"}
        r = client.post("/api/label", json=body)
        assert r.status_code == 200
        seen.append(r.text)
    assert kinds == ["rank"] * 3 + ["ab"] * 2
    ab = [json.loads(t)["item"] for t in seen if '"kind":"ab"' in t]
    assert {tuple(sorted(i["responses"])) for i in ab} == {("left 0", "right 0"), ("left 1", "right 1")}
    assert set(ab[0]) == {"assignment", "kind", "prompt", "turns", "responses"}
    seen.append(client.get("/api/labels").text)
    text = "\n".join(seen)
    for secret in (MODEL_A, MODEL_B, "policy-", "reward", "length_a", "mean_reward", *(
            repr(v) for pair in REWARDS.values() for v in pair)):
        assert secret not in text, secret
    # and not in the page a browser loads
    browser = TestClient(env.app)
    sign_in(env, browser, env.alice)
    page = browser.get("/").text
    assert MODEL_A not in page and MODEL_B not in page and "0.123456" not in page


def test_display_order_is_undone_when_storing(env, monkeypatch):
    class Reverse:
        def shuffle(self, x):
            x.reverse()

    monkeypatch.setattr(store_module.random, "SystemRandom", Reverse)
    client = env.client_for(env.alice)
    item = next_item(client)
    assert item["responses"] == ["third 0", "second 0", "first 0"]  # shown reversed
    # best first as shown: "second 0" (shown 2), "first 0" (shown 3), "third 0" (shown 1); unsafe: shown 1
    assert client.post("/api/label", json={"assignment": item["assignment"], "order": [2, 3, 1],
                                           "unsafe": [1]}).status_code == 200
    label = client.get("/api/labels").json()["labels"][0]
    assert label["ranks"] == [1, 0, 2] and label["unsafe"] == [2]  # in the file's order: first, second, third
    for _ in range(2):
        client.post("/api/label", json=rank_body(next_item(client)))
    item = next_item(client)  # A/B item 0 (A is response_1 = "left 0"), shown reversed
    assert item["responses"] == ["right 0", "left 0"]
    assert client.post("/api/label", json={"assignment": item["assignment"], "choice": "1"}).status_code == 200
    assert client.get("/api/labels").json()["labels"][-1]["verdict"] == "2"  # compare label 2: "right 0"


# Errors and headers.

def test_internal_error_is_one_line_without_traceback(env, monkeypatch):
    def boom(*args):
        raise RuntimeError("boom")

    client = env.client_for(env.alice, raise_server_exceptions=False)
    monkeypatch.setattr(env.store, "next_item", boom)
    r = client.get("/api/next")
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"error": "internal error (RuntimeError); the server log has the details"}
    assert "\n" not in r.text.strip() and "Traceback" not in r.text and "boom" not in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    browser = TestClient(env.app, raise_server_exceptions=False)
    sign_in(env, browser, env.alice)
    monkeypatch.setattr(env.store, "session", boom)
    r = browser.get("/")
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/html")
    assert "Traceback" not in r.text and "boom" not in r.text and "internal error" in r.text
    assert r.headers["x-content-type-options"] == "nosniff"


def test_security_headers_on_every_answer(env):
    browser = TestClient(env.app)
    answers = [browser.get("/login"), browser.get("/api/next"), browser.get("/", follow_redirects=False),
               browser.get("/static/annotate.js"), browser.get("/api/nope")]
    sign_in(env, browser, env.alice)
    answers += [browser.get("/"), browser.get("/api/next"), browser.get("/admin")]
    for r in answers:
        csp = r.headers.get("content-security-policy", "")
        directives = {d.strip().split()[0]: d.strip().split()[1:] for d in csp.split(";") if d.strip()}
        assert directives.get("script-src") == ["'self'"], (r.url, csp)
        assert directives.get("default-src") == ["'none'"] and directives.get("frame-ancestors") == ["'none'"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
    assert [r.status_code for r in answers] == [200, 401, 303, 200, 404, 200, 200, 403]


def test_admin_routes_are_403_for_non_admins(env):
    alice = env.client_for(env.alice)
    r = alice.get("/api/admin/summary")
    assert r.status_code == 403 and "admin" in r.json()["error"]
    browser = TestClient(env.app)
    sign_in(env, browser, env.alice)
    assert browser.get("/admin").status_code == 403
    boss = env.client_for(env.boss)
    summary = boss.get("/api/admin/summary").json()
    assert {r["kind"]: (r["items"], r["labels_needed"]) for r in summary["items"]} == {"ab": (2, 4), "rank": (3, 6)}
    assert [a["name"] for a in summary["annotators"]] == ["alice", "bob", "boss"]
    admin_browser = TestClient(env.app)
    sign_in(env, admin_browser, env.boss)
    assert admin_browser.get("/admin").status_code == 200


# Task files, the schema, the load command.

def _error_of(path) -> str:
    with pytest.raises(TaskFileError) as e:
        read_tasks(path)
    return str(e.value)


def test_task_file_errors_name_file_line_and_field(tmp_path):
    good = {"prompt": "q", "responses": ["a", "b"]}
    cases = [
        ([good, {"responses": ["a", "b"]}], ":2: prompt: missing"),
        ([{"prompt": "q"}], ":1: responses: expected a list of 2 to 8"),
        ([{"prompt": "q", "responses": ["a"]}], ":1: responses: expected a list"),
        ([{"prompt": "q", "responses": [f"r{i}" for i in range(9)]}], ":1: responses: expected a list"),
        ([good, good, '{"prompt": "q", "responses"'], ":3: not JSON"),
        (["[1, 2]"], ":1: expected a JSON object"),
        ([{"prompt": "q", "responses": ["same", "same"]}], ": no row has two different responses to rank"),
        ([{"prompt": "q", "responses": ["a", "  "]}], ":1: responses[1]: empty"),
        ([{"prompt": "q", "responses": [3, "b"]}], ":1: responses[0]: not a string"),
        ([{"prompt": "  ", "responses": ["a", "b"]}], ":1: prompt: "),
        ([{"prompt": 5, "responses": ["a", "b"]}], ":1: prompt"),
    ]
    for k, (rows, expected) in enumerate(cases):
        path = tmp_path / f"case{k}.jsonl"
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        message = _error_of(path)
        assert message.startswith(f"{path}{expected}"), (message, expected)
    # A repeat is shown once (a sampler often says the same thing twice); a row left with one text is left out.
    path = tmp_path / "repeats.jsonl"
    path.write_text(json.dumps({"prompt": "q", "responses": ["same", "other", "same"]}) + "\n"
                    + json.dumps({"prompt": "r", "responses": ["x", "x"]}) + "\n")
    counts = collections.Counter()
    assert [t.responses for t in read_tasks(path, counts)] == [("same", "other")]
    assert counts == {"repeated_responses": 2, "nothing_to_rank": 1}
    assert _error_of(tmp_path / "nothere.jsonl").endswith("nothere.jsonl: task file not found")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert "no tasks" in _error_of(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert "not UTF-8" in _error_of(tmp_path / "latin1.jsonl")


def test_compare_folder_errors(tmp_path):
    folder = write_compare(tmp_path / "nokey")
    (folder / "key.json").unlink()
    message = _error_of(folder)
    assert message.startswith(str(folder)) and "key.json missing" in message
    folder = write_compare(tmp_path / "badkey")
    (folder / "key.json").write_text("{not json")
    assert _error_of(folder).startswith(f"{folder / 'key.json'}: not a compare key")
    folder = write_compare(tmp_path / "noresponse")
    write_jsonl(folder / "pairs.jsonl", [{"id": 0, "prompt": "p", "response_1": "x", "response_2": "y"},
                                         {"id": 1, "prompt": "p", "response_1": "x"}])
    assert _error_of(folder).startswith(f"{folder / 'pairs.jsonl'}:2: response_2: missing")
    folder = write_compare(tmp_path / "unknownid")
    write_jsonl(folder / "pairs.jsonl", [{"id": 7, "prompt": "p", "response_1": "x", "response_2": "y"}])
    assert _error_of(folder).startswith(f"{folder / 'pairs.jsonl'}:1: id: 7 has no entry in key.json")
    tasks = read_tasks(write_compare(tmp_path / "good"))
    assert [t.kind for t in tasks] == ["ab", "ab"]
    assert tasks[1].secret == {"id": 1, "a": 2, "reward_a": -3.217, "reward_b": 2.991,
                               "models": {"a": MODEL_A, "b": MODEL_B}}


def test_loading_the_same_tasks_twice_stores_each_once(tmp_path):
    store = Store(str(tmp_path / "labels.sqlite"))
    path = write_jsonl(tmp_path / "rank.jsonl", RANK_ROWS + [RANK_ROWS[0]])  # one row twice in the file too
    assert store.add_tasks(read_tasks(path), needed=2, source=path) == {"added": 3, "already_stored": 1}
    assert store.add_tasks(read_tasks(path), needed=2, source=path) == {"added": 0, "already_stored": 4}
    assert store.db.one("SELECT COUNT(*) FROM items")[0] == 3
    # the same prompt with other responses is another task
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "rank question 0", "responses": ["x", "y"]}])
    assert store.add_tasks(read_tasks(other), needed=2, source=other)["added"] == 1
    with pytest.raises(ValueError, match="must be >= 1"):
        store.add_tasks(read_tasks(other), needed=0, source=other)


def test_schema_version_from_elsewhere_is_refused(tmp_path):
    path = tmp_path / "labels.sqlite"
    Store(str(path)).add_annotator("alice")
    Store(str(path))  # opening it again is fine
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ValueError, match=r"schema 99; this jaxrlhf reads schema 1 \(made by a newer jaxrlhf\)"):
        Store(str(path))
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="cannot open it as a SQLite database"):
        Store(str(tmp_path / "garbage.sqlite"))
    with pytest.raises(ValueError, match="folder does not exist"):
        Store(str(tmp_path / "no" / "labels.sqlite"))


def test_store_refuses_late_and_duplicate_work(tmp_path):
    store = Store(str(tmp_path / "labels.sqlite"), lease_s=0.0)  # every lease runs out at once
    path = write_jsonl(tmp_path / "rank.jsonl", RANK_ROWS[:1])
    store.add_tasks(read_tasks(path), needed=1, source=path)
    alice = store.annotator_by_token(store.add_annotator("alice"))
    item = store.next_item(alice)
    with pytest.raises(LabelError) as e:
        store.submit(alice, rank_body(item))
    assert e.value.status == 409 and "ran out" in e.value.message
    assert store.db.one("SELECT COUNT(*) FROM labels")[0] == 0
    with pytest.raises(ValueError, match="already exists"):
        store.add_annotator("alice")
    with pytest.raises(ValueError, match="printable"):
        store.add_annotator(" alice")


def _annotate(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "jaxrlhf.annotate", *args], cwd=cwd, env=cpu_env(),
                         capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.multiprocess
def test_load_command_refuses_a_bad_file_before_storing_anything(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", RANK_ROWS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RANK_ROWS[0]) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    db = tmp_path / "labels.sqlite"
    code, stdout, stderr = _annotate("load", f"--db={db}", f"--tasks={good},{bad}", cwd=REPO_ROOT)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in stderr, stderr
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]]
    assert lines[-1] == f"error: {bad}:2: responses: expected a list of 2 to 8 texts"
    assert Store(str(db)).db.one("SELECT COUNT(*) FROM items")[0] == 0  # not even good.jsonl's tasks
    # the good file (named twice) loads once
    code, stdout, stderr = _annotate("load", f"--db={db}", f"--tasks={good},{good}", "--per_item=2", cwd=REPO_ROOT)
    assert code == 0, stderr
    assert json.loads(stdout) == [{"tasks": good, "added": 3, "already_stored": 0},
                                  {"tasks": good, "added": 0, "already_stored": 3}]
    assert Store(str(db)).db.all("SELECT needed FROM items") == [(2,), (2,), (2,)]
