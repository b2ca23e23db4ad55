"""The label store (jaxrlhf/feedback/store.py) on a real PostgreSQL server, started here from the PostgreSQL
binaries when they are installed: migration, annotators, tasks, 8 concurrent annotators ending with exactly
N labels per item, replays refused, and the export and A/B report equal to a SQLite store's given the same
scripted labels.

The server runs as the `postgres` system user when the tests run as root (postgres refuses root), in a
temporary folder that user owns, on a free port of 127.0.0.1 with trust authentication; it starts once for
the module and stops at its end.
"""

import json
import os
import pwd
import random
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from jaxrlhf.feedback.export import export, pair_rows, ranking_rows, report
from jaxrlhf.feedback.store import LabelError, Store
from jaxrlhf.feedback.tasks import read_tasks
from tests.helpers.data import write_jsonl
from tests.helpers.processes import free_port

pytestmark = pytest.mark.multiprocess  # a PostgreSQL server process

PG_BIN = Path(os.environ.get("JAXRLHF_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _why_not() -> str | None:
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / name).is_file()]
    if missing:
        return f"PostgreSQL binaries not found in {PG_BIN} ({', '.join(missing)}; set JAXRLHF_PG_BIN)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg package is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no `postgres` system user to run the PostgreSQL server as"
    return None


class Server:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="jaxrlhf-pg-"))  # not under pytest's root-only tmp folder
        self.as_user = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.data, self.port = self.root / "data", free_port()
        self.databases = 0

    def run(self, *args):
        out = subprocess.run([str(PG_BIN / args[0]), *args[1:]], cwd=self.root, capture_output=True, text=True,
                             timeout=120, env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}, **self.as_user)
        assert out.returncode == 0, f"{args[0]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"

    def start(self):
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c max_connections=50")
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o",
                 options, "start")

    def stop(self):
        try:
            if (self.data / "postmaster.pid").exists():
                self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        import psycopg

        self.databases += 1
        name = f"labels{self.databases}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def server():
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    server = Server()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def url(server):
    return server.new_database()


def rank_tasks(tmp_path, n, name="rank.jsonl"):
    path = write_jsonl(tmp_path / name, [
        {"prompt": f"question {i}", "responses": [f"answer {i}.{k}" for k in range(2 + i % 3)]} for i in range(n)])
    return path, read_tasks(path)


def test_migrate_annotators_and_tasks(url, tmp_path):
    store = Store(url)
    assert store.db.postgres and store.db.one("SELECT value FROM meta WHERE key = 'schema_version'") == ("1",)
    token = store.add_annotator("alice")
    store.add_annotator("boss", admin=True)
    again = Store(url)  # a second server on the same database: the schema is there, nothing is redone
    alice = again.annotator_by_token(token)
    assert alice.name == "alice" and not alice.is_admin and again.annotator_by_token(token + "x") is None
    with pytest.raises(ValueError, match="already exists"):
        again.add_annotator("alice")
    path, tasks = rank_tasks(tmp_path, 5)
    assert store.add_tasks(tasks, needed=2, source=path) == {"added": 5, "already_stored": 0}
    assert again.add_tasks(tasks, needed=2, source=path) == {"added": 0, "already_stored": 5}
    assert store.db.one("SELECT COUNT(*) FROM items")[0] == 5
    session, csrf = store.create_session(alice)
    assert again.session(session) == (alice, csrf)
    store.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ValueError, match="schema 99; this jaxrlhf reads schema 1"):
        Store(url)


def test_eight_concurrent_annotators_leave_exactly_n_labels(url, tmp_path):
    items, needed, workers = 30, 3, 8
    store = Store(url)
    path, tasks = rank_tasks(tmp_path, items)
    store.add_tasks(tasks, needed=needed, source=path)
    tokens = [store.add_annotator(f"annotator{k}") for k in range(workers)]
    stored, refused, errors = [0] * workers, [0] * workers, []
    barrier = threading.Barrier(workers)

    def work(k):
        own = Store(url)  # its own connection, as a separate server process would have
        me = own.annotator_by_token(tokens[k])
        rng = random.Random(k)
        barrier.wait()
        try:
            while (item := own.next_item(me)) is not None:
                order = list(range(1, len(item["responses"]) + 1))
                rng.shuffle(order)
                try:
                    own.submit(me, {"assignment": item["assignment"], "order": order})
                    stored[k] += 1
                except LabelError as e:
                    refused[k] += 1
                    errors.append(e)
        finally:
            own.db.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == [] and sum(refused) == 0
    labelled = store.items_with_labels("rank")
    assert [len(item["labels"]) for item in labelled] == [needed] * items
    pairs = store.db.all("SELECT item_id, annotator_id FROM labels")
    assert len(pairs) == len(set(pairs)) == sum(stored) == items * needed
    assert sum(s > 0 for s in stored) >= 2  # the work was shared
    assert store.summary()["items"] == [{"kind": "rank", "items": items, "labels_needed": items * needed,
                                         "labels": items * needed, "complete_items": items}]


def test_replay_and_foreign_assignments_are_refused(url, tmp_path):
    store = Store(url)
    path, tasks = rank_tasks(tmp_path, 2)
    store.add_tasks(tasks, needed=2, source=path)
    alice = store.annotator_by_token(store.add_annotator("alice"))
    bob = store.annotator_by_token(store.add_annotator("bob"))
    item = store.next_item(alice)
    assert store.next_item(alice) == item  # a reload gets the same lease back
    body = {"assignment": item["assignment"], "order": [2, 1]}
    with pytest.raises(LabelError) as e:
        store.submit(bob, body)
    assert e.value.status == 404
    store.submit(alice, body)
    with pytest.raises(LabelError) as e:
        store.submit(alice, body)
    assert e.value.status == 409
    with pytest.raises(LabelError) as e:
        store.submit(alice, {"assignment": item["assignment"], "order": [1, 1]})
    assert e.value.status == 409  # spent: not even looked at
    assert store.db.one("SELECT COUNT(*) FROM labels")[0] == 1
    assert store.progress(alice) == {"labelled": 1, "skipped": 0, "remaining": 1}


def _write_compare(folder, n):
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", [{"id": i, "prompt": f"ab {i}", "response_1": f"one {i}",
                                          "response_2": f"two {i}"} for i in range(n)])
    (folder / "key.json").write_text(json.dumps({"a": "pa", "b": "pb", "items": [
        {"id": i, "a": 1 + i % 2, "b": 2 - i % 2, "reward_a": float(i % 3), "reward_b": 1.0} for i in range(n)]}))
    return folder


def _scripted_labels(store, names):
    """Every annotator in turn labels what it is given, judging by the response texts (not their shown
    order): the same labels on any store holding the same tasks. Returns the annotators."""
    annotators = []
    for name in names:
        me = store.annotator_by_token(store.add_annotator(name))
        annotators.append(me)
        while (item := store.next_item(me)) is not None:
            score = {t: random.Random(f"{name}|{t}").random() for t in item["responses"]}
            shown = item["responses"]
            if score[min(shown)] < 0.1:
                store.submit(me, {"assignment": item["assignment"], "skip": True})
                continue
            body = {"assignment": item["assignment"], "unsafe": [k + 1 for k, t in enumerate(shown)
                                                                  if score[t] > 0.9],
                    "comment": f"{name} on {item['prompt']}" if score[max(shown)] > 0.7 else ""}
            if item["kind"] == "ab":
                gap = score[shown[1]] - score[shown[0]]
                body["choice"] = "tie" if abs(gap) < 0.15 else ("2" if gap > 0 else "1")
            else:
                body["order"] = sorted(range(1, len(shown) + 1), key=lambda p: -score[shown[p - 1]])
            store.submit(me, body)
    return annotators


def test_export_and_report_equal_sqlite(url, tmp_path):
    path, tasks = rank_tasks(tmp_path, 12)
    ab = read_tasks(_write_compare(tmp_path / "compare", 8))
    results = []
    for where in (url, str(tmp_path / "labels.sqlite")):
        store = Store(where)
        store.add_tasks(tasks, needed=3, source=path)
        store.add_tasks(ab, needed=3, source="compare")
        annotators = _scripted_labels(store, [f"p{k}" for k in range(5)])
        ranked = ranking_rows(store)
        out = tmp_path / f"{'pg' if store.db.postgres else 'sqlite'}.jsonl"
        summary = export(store, out, format="pairs")
        results.append({"ranked": ranked, "pairs": pair_rows(ranked), "report": report(store),
                        "file": out.read_text(), "summary": store.summary(), "rows": summary["rows"],
                        "incomplete": ranking_rows(store, include_incomplete=True),
                        "own": [[{k: v for k, v in lab.items() if k != "created_at"} for lab in store.own_labels(a)]
                                for a in annotators]})
    pg, sqlite = results
    assert sqlite["rows"] > 0 and sqlite["report"]["human"]["items"] == 8
    assert 0 < len(sqlite["ranked"]) < len(sqlite["incomplete"]) == 12  # skips left an item short of 3 labels
    assert any(r["comments"] for r in sqlite["ranked"]) and any(any(r["unsafe"]) for r in sqlite["ranked"])
    assert sum(a["skipped"] for a in sqlite["summary"]["annotators"]) > 0  # the script skipped some
    for key in sqlite:
        assert pg[key] == sqlite[key], key
