"""What the annotation server stores: annotators, tasks, who was given what, and their labels.

An item goes to `needed` annotators, never twice to the same one. Handing an item out leases it to the
annotator for `lease_s` seconds (a reload gets the same item back); an item is offered only while its
labels plus the live leases of others stay below `needed`, so N people working at once end with exactly
N labels per item. A label is accepted once per lease: its `nonce` is spent by the first submission, so
a replayed POST stores nothing. A skip is stored (that annotator is not asked again) but does not count
toward `needed`. Rankings are stored against the responses' original order: `ranks[k]` is the 0-based
rank of response k, whatever order this annotator saw them in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import secrets
import time

from jaxrlhf.feedback.database import Database
from jaxrlhf.feedback.tasks import Task

SCHEMA_VERSION = 1
MAX_COMMENT_CHARS = 2000
VERDICTS = {"1", "2", "tie"}


class LabelError(Exception):
    """A submission that is refused: `status` is the HTTP status it answers with; nothing was stored."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _schema(id_column: str) -> list[str]:
    return [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"CREATE TABLE annotators (id {id_column}, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL UNIQUE, "
        "is_admin INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
        f"CREATE TABLE items (id {id_column}, kind TEXT NOT NULL, fingerprint TEXT NOT NULL UNIQUE, "
        "payload TEXT NOT NULL, secret TEXT, needed INTEGER NOT NULL, source TEXT NOT NULL, "
        "created_at DOUBLE PRECISION NOT NULL)",
        f"CREATE TABLE assignments (id {id_column}, item_id BIGINT NOT NULL REFERENCES items(id), "
        "annotator_id BIGINT NOT NULL REFERENCES annotators(id), nonce TEXT NOT NULL UNIQUE, "
        "display_order TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, done INTEGER NOT NULL, "
        "UNIQUE (item_id, annotator_id))",
        f"CREATE TABLE labels (id {id_column}, item_id BIGINT NOT NULL REFERENCES items(id), "
        "annotator_id BIGINT NOT NULL REFERENCES annotators(id), assignment_id BIGINT NOT NULL UNIQUE "
        "REFERENCES assignments(id), skipped INTEGER NOT NULL, ranks TEXT, verdict TEXT, unsafe TEXT NOT NULL, "
        "comment TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, UNIQUE (item_id, annotator_id))",
        "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, annotator_id BIGINT NOT NULL REFERENCES annotators(id), "
        "csrf TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX labels_item ON labels (item_id)",
        "CREATE INDEX assignments_item ON assignments (item_id)",
    ]


class Store:
    def __init__(self, url: str, lease_s: float = 1800.0, session_s: float = 12 * 3600.0):
        self.db = Database(url)
        self.lease_s, self.session_s = lease_s, session_s
        self._migrate()

    def _migrate(self) -> None:
        with self.db.write() as db:
            exists = db.one("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'meta'") \
                if db.postgres else db.one("SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name='meta'")
            if not exists[0]:
                for statement in _schema(db.id_column):
                    db.execute(statement)
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            version = int(db.one("SELECT value FROM meta WHERE key = 'schema_version'")[0])
        if version != SCHEMA_VERSION:
            raise ValueError(f"{self.db.url}: annotation database schema {version}; this jaxrlhf reads schema "
                             f"{SCHEMA_VERSION}" + (" (made by a newer jaxrlhf)" if version > SCHEMA_VERSION else ""))

    # Annotators and sessions.

    def add_annotator(self, name: str, admin: bool = False) -> str:
        """Registers `name`; returns its sign-in token (only its hash is stored)."""
        if not name or len(name) > 64 or not name.isprintable() or name != name.strip():
            raise ValueError(f"annotator name {name!r}: 1 to 64 printable characters, no surrounding spaces")
        token = secrets.token_urlsafe(24)
        with self.db.write() as db:
            if db.one("SELECT id FROM annotators WHERE name = ?", (name,)):
                raise ValueError(f"annotator {name!r} already exists")
            db.execute("INSERT INTO annotators (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                       (name, token_hash(token), int(admin), time.time()))
        return token

    def annotator_by_token(self, token: str) -> Annotator | None:
        row = self.db.one("SELECT id, name, is_admin FROM annotators WHERE token_hash = ?", (token_hash(token),))
        return Annotator(row[0], row[1], bool(row[2])) if row else None

    def create_session(self, annotator: Annotator) -> tuple[str, str]:
        """(session token for the cookie, CSRF token for the page)."""
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        with self.db.write() as db:
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            db.execute("INSERT INTO sessions (token_hash, annotator_id, csrf, expires_at) VALUES (?, ?, ?, ?)",
                       (token_hash(session), annotator.id, csrf, now + self.session_s))
        return session, csrf

    def session(self, session: str) -> tuple[Annotator, str] | None:
        row = self.db.one("SELECT a.id, a.name, a.is_admin, s.csrf FROM sessions s JOIN annotators a "
                          "ON a.id = s.annotator_id WHERE s.token_hash = ? AND s.expires_at > ?",
                          (token_hash(session), time.time()))
        return (Annotator(row[0], row[1], bool(row[2])), row[3]) if row else None

    def end_session(self, session: str) -> None:
        with self.db.write() as db:
            db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(session),))

    # Tasks.

    def add_tasks(self, tasks: list[Task], needed: int, source: str) -> dict:
        """Stores the tasks not stored before (by fingerprint); returns {"added", "already_stored"}."""
        if needed < 1:
            raise ValueError(f"annotations per item must be >= 1, got {needed}")
        added = 0
        with self.db.write() as db:
            for task in tasks:
                if db.one("SELECT id FROM items WHERE fingerprint = ?", (task.fingerprint,)):
                    continue
                db.execute("INSERT INTO items (kind, fingerprint, payload, secret, needed, source, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (task.kind, task.fingerprint, json.dumps(task.payload()),
                            None if task.secret is None else json.dumps(task.secret), needed, source, time.time()))
                added += 1
        return {"added": added, "already_stored": len(tasks) - added}

    # Handing out items and taking labels.

    _OPEN_ITEMS = ("FROM items i WHERE NOT EXISTS (SELECT 1 FROM labels l WHERE l.item_id = i.id AND "
                   "l.annotator_id = ?) AND (SELECT COUNT(*) FROM labels l WHERE l.item_id = i.id AND l.skipped = 0) "
                   "+ (SELECT COUNT(*) FROM assignments a WHERE a.item_id = i.id AND a.done = 0 AND a.expires_at > ? "
                   "AND a.annotator_id <> ?) < i.needed")

    def next_item(self, annotator: Annotator) -> dict | None:
        """The item this annotator works on now (the one already leased to them, else a new lease), as the
        browser may see it: {"assignment", "kind", "prompt", "turns", "responses" in this annotator's order}."""
        now = time.time()
        with self.db.write() as db:
            row = db.one("SELECT a.nonce, a.display_order, i.kind, i.payload FROM assignments a JOIN items i "
                         "ON i.id = a.item_id WHERE a.annotator_id = ? AND a.done = 0 AND a.expires_at > ? "
                         "ORDER BY a.id LIMIT 1", (annotator.id, now))
            if row is None:
                item = db.one(f"SELECT i.id, i.kind, i.payload {self._OPEN_ITEMS} ORDER BY i.id LIMIT 1",
                              (annotator.id, now, annotator.id))
                if item is None:
                    return None
                item_id, kind, payload = item
                count = len(json.loads(payload)["responses"])
                order = list(range(count))
                random.SystemRandom().shuffle(order)
                nonce = secrets.token_urlsafe(24)
                if db.one("SELECT id FROM assignments WHERE item_id = ? AND annotator_id = ?", (item_id, annotator.id)):
                    # Their earlier lease ran out unlabelled and the item is still open: lease it again.
                    db.execute("UPDATE assignments SET nonce = ?, display_order = ?, expires_at = ? WHERE "
                               "item_id = ? AND annotator_id = ?",
                               (nonce, json.dumps(order), now + self.lease_s, item_id, annotator.id))
                else:
                    db.execute("INSERT INTO assignments (item_id, annotator_id, nonce, display_order, expires_at, "
                               "done) VALUES (?, ?, ?, ?, ?, 0)",
                               (item_id, annotator.id, nonce, json.dumps(order), now + self.lease_s))
                row = (nonce, json.dumps(order), kind, payload)
        nonce, order, kind, payload = row[0], json.loads(row[1]), row[2], json.loads(row[3])
        return {"assignment": nonce, "kind": kind, "prompt": payload["prompt"], "turns": payload["turns"],
                "responses": [payload["responses"][k] for k in order]}

    def submit(self, annotator: Annotator, body: dict) -> None:
        """Stores one label (see the module doc) or raises `LabelError`, storing nothing."""
        nonce = body.get("assignment")
        if not isinstance(nonce, str):
            raise LabelError(400, "assignment: missing (the id of the item being labelled)")
        now = time.time()
        with self.db.write() as db:
            row = db.one("SELECT a.id, a.item_id, a.annotator_id, a.display_order, a.expires_at, a.done, i.kind, "
                         "i.needed FROM assignments a JOIN items i ON i.id = a.item_id WHERE a.nonce = ?", (nonce,))
            if row is None or row[2] != annotator.id:
                raise LabelError(404, "no such assignment for you: load the next item")
            assignment_id, item_id, _, order, expires_at, done, kind, needed = row
            if done:
                raise LabelError(409, "this item is already labelled; a repeated submission is not stored twice")
            if expires_at <= now:
                raise LabelError(409, "the time to label this item ran out; load the next item")
            skipped, ranks, verdict, unsafe, comment = _parse_label(kind, json.loads(order), body)
            labelled = db.one("SELECT COUNT(*) FROM labels WHERE item_id = ? AND skipped = 0", (item_id,))[0]
            if not skipped and labelled >= needed:
                raise LabelError(409, "this item has all its labels; load the next item")
            db.execute("INSERT INTO labels (item_id, annotator_id, assignment_id, skipped, ranks, verdict, unsafe, "
                       "comment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (item_id, annotator.id, assignment_id, int(skipped), ranks, verdict, unsafe, comment, now))
            db.execute("UPDATE assignments SET done = 1 WHERE id = ?", (assignment_id,))

    def progress(self, annotator: Annotator) -> dict:
        now = time.time()
        labelled, skipped = self.db.one(
            "SELECT COALESCE(SUM(1 - skipped), 0), COALESCE(SUM(skipped), 0) FROM labels WHERE annotator_id = ?",
            (annotator.id,))
        open_items = self.db.one(f"SELECT COUNT(*) {self._OPEN_ITEMS}", (annotator.id, now, annotator.id))[0]
        return {"labelled": int(labelled), "skipped": int(skipped), "remaining": int(open_items)}

    def own_labels(self, annotator: Annotator) -> list[dict]:
        rows = self.db.all("SELECT l.item_id, l.skipped, l.ranks, l.verdict, l.unsafe, l.comment, l.created_at, "
                           "i.payload FROM labels l JOIN items i ON i.id = l.item_id WHERE l.annotator_id = ? "
                           "ORDER BY l.id", (annotator.id,))
        return [{"item": r[0], "skipped": bool(r[1]), "ranks": _loads(r[2]), "verdict": r[3],
                 "unsafe": json.loads(r[4]), "comment": r[5], "created_at": r[6],
                 "prompt": json.loads(r[7])["prompt"]} for r in rows]

    # Reading everything back (export, report, admin).

    def items_with_labels(self, kind: str) -> list[dict]:
        """Every item of `kind` with its non-skipped labels, in item order."""
        items = {r[0]: {"id": r[0], "payload": json.loads(r[1]), "secret": _loads(r[2]), "needed": r[3], "labels": []}
                 for r in self.db.all("SELECT id, payload, secret, needed FROM items WHERE kind = ? ORDER BY id",
                                      (kind,))}
        for item_id, annotator, ranks, verdict, unsafe, comment in self.db.all(
                "SELECT l.item_id, a.name, l.ranks, l.verdict, l.unsafe, l.comment FROM labels l JOIN annotators a "
                "ON a.id = l.annotator_id JOIN items i ON i.id = l.item_id WHERE i.kind = ? AND l.skipped = 0 "
                "ORDER BY l.id", (kind,)):
            items[item_id]["labels"].append({"annotator": annotator, "ranks": _loads(ranks), "verdict": verdict,
                                             "unsafe": json.loads(unsafe), "comment": comment})
        return list(items.values())

    def summary(self) -> dict:
        """Counts for the admin page."""
        items = self.db.all("SELECT kind, COUNT(*), SUM(needed) FROM items GROUP BY kind ORDER BY kind")
        labels = self.db.all("SELECT i.kind, COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id "
                             "WHERE l.skipped = 0 GROUP BY i.kind")
        complete = self.db.all("SELECT i.kind, COUNT(*) FROM items i WHERE (SELECT COUNT(*) FROM labels l "
                               "WHERE l.item_id = i.id AND l.skipped = 0) >= i.needed GROUP BY i.kind")
        people = self.db.all("SELECT a.name, a.is_admin, COALESCE(SUM(1 - l.skipped), 0), COALESCE(SUM(l.skipped), 0) "
                             "FROM annotators a LEFT JOIN labels l ON l.annotator_id = a.id GROUP BY a.id, a.name, "
                             "a.is_admin ORDER BY a.name")
        labelled, done = dict(labels), dict(complete)
        return {"items": [{"kind": k, "items": int(n), "labels_needed": int(need), "labels": int(labelled.get(k, 0)),
                           "complete_items": int(done.get(k, 0))} for k, n, need in items],
                "annotators": [{"name": n, "admin": bool(a), "labelled": int(c), "skipped": int(s)}
                               for n, a, c, s in people]}


def _loads(value):
    return None if value is None else json.loads(value)


def _parse_label(kind: str, order: list[int], body: dict):
    """(skipped, ranks json, verdict, unsafe json, comment) from a submission, in the original response order."""
    count = len(order)
    comment = body.get("comment", "")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
        raise LabelError(400, f"comment: a string of at most {MAX_COMMENT_CHARS} characters")
    unsafe_shown = body.get("unsafe", [])
    if not isinstance(unsafe_shown, list) or not all(isinstance(p, int) and not isinstance(p, bool) and
                                                      1 <= p <= count for p in unsafe_shown) \
            or len(set(unsafe_shown)) != len(unsafe_shown):
        raise LabelError(400, f"unsafe: a list of distinct response numbers 1..{count}")
    unsafe = json.dumps(sorted(order[p - 1] for p in unsafe_shown))
    skip = body.get("skip", False)
    if not isinstance(skip, bool):
        raise LabelError(400, "skip: true or false")
    if skip:
        return True, None, None, unsafe, comment
    if kind == "ab":
        choice = body.get("choice")
        if not isinstance(choice, str) or choice not in VERDICTS:  # a list or dict is not hashable
            raise LabelError(400, "choice: one of \"1\", \"2\" or \"tie\"")
        # Display position -> the response's label in the compare output (1 or 2); the key maps it to A or B
        # when the report is made, so the server need not read the key here.
        verdict = "tie" if choice == "tie" else str(order[int(choice) - 1] + 1)
        return False, None, verdict, unsafe, comment
    shown = body.get("order")
    if not isinstance(shown, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in shown) or \
            sorted(shown) != list(range(1, count + 1)):
        raise LabelError(400, f"order: the response numbers 1..{count}, best first, each once")
    ranks = [0] * count
    for rank, position in enumerate(shown):
        ranks[order[position - 1]] = rank
    return False, json.dumps(ranks), None, unsafe, comment
