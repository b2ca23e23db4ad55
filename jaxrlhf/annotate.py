"""Collect rankings and A/B verdicts from people in a browser, and turn them into training data.

    python -m jaxrlhf.annotate add-annotator alice --db=labels.sqlite          # prints alice's sign-in token
    python -m jaxrlhf.annotate add-annotator boss --admin --db=labels.sqlite
    python -m jaxrlhf.annotate serve --db=labels.sqlite --tasks=samples.jsonl --per_item=3
    python -m jaxrlhf.annotate export --db=labels.sqlite --out=rankings.jsonl  # train_rm reads it
    python -m jaxrlhf.annotate serve --db=labels.sqlite --tasks=compare_out/   # A/B tasks from compare
    python -m jaxrlhf.annotate report --db=labels.sqlite
    python -m jaxrlhf.annotate bot --url=http://127.0.0.1:8001 --token=T --rm=workdir/rm/export

Ranking tasks are `python -m jaxrlhf.sample` output; A/B tasks a `python -m jaxrlhf.compare` output folder,
whose key stays on the server. `--db` is a SQLite file or a `postgresql://` URL. `bot` is a scripted
annotator that ranks by a reward model's scores through the same HTTP API. The app: jaxrlhf/feedback/app.py.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from jaxrlhf.infra.runtime import cli_errors, run_app

COMMANDS = ("serve", "add-annotator", "load", "export", "report", "bot")
flags.DEFINE_string("db", "labels.sqlite", "SQLite file or postgresql:// URL of the label store.")
flags.DEFINE_list("tasks", [], "serve/load: task files (sample JSONL) or compare output folders, comma-separated.")
flags.DEFINE_integer("per_item", 3, "serve/load: annotators each new item goes to.")
flags.DEFINE_string("host", "127.0.0.1", "serve: address to bind (only this machine by default).")
flags.DEFINE_integer("port", 8001, "serve: port to listen on.")
flags.DEFINE_float("lease_minutes", 30.0, "serve: how long an item stays reserved for the annotator given it.")
flags.DEFINE_bool("secure_cookies", False, "serve: mark cookies Secure (when served behind HTTPS).")
flags.DEFINE_bool("admin", False, "add-annotator: the token opens the admin page.")
flags.DEFINE_string("out", None, "export: output JSONL; report: also write the JSON here.")
flags.DEFINE_enum("format", "ranked", ["ranked", "pairs"], "export: ranked lists or (chosen, rejected) pairs.")
flags.DEFINE_bool("include_incomplete", False, "export: also items with fewer labels than they need.")
flags.DEFINE_string("url", "http://127.0.0.1:8001", "bot: the annotation server.")
flags.DEFINE_string("token", None, "bot: the annotator's token.")
flags.DEFINE_string("rm", None, "bot: reward model whose scores the bot ranks by.")
flags.DEFINE_float("noise", 0.0, "bot: std of Gaussian noise added to the scores (annotators disagree).")
flags.DEFINE_float("tie_margin", 0.0, "bot: A/B scores closer than this are a tie.")
flags.DEFINE_integer("seed", 0, "bot: seed of the noise.")
flags.DEFINE_integer("limit", 0, "bot: stop after this many labels (0: until nothing is left).")
FLAGS = flags.FLAGS


def _load(store) -> list[dict]:
    import collections

    from jaxrlhf.feedback.tasks import read_tasks

    read = []
    for path in FLAGS.tasks:  # every file valid before anything is stored
        counts = collections.Counter()
        read.append((path, read_tasks(path, counts), counts))
    return [{"tasks": path, **store.add_tasks(tasks, FLAGS.per_item, path), **counts} for path, tasks, counts in read]


def main(argv):
    with cli_errors():
        if len(argv) < 2 or argv[1] not in COMMANDS:
            raise ValueError(f"give a command: one of {', '.join(COMMANDS)} (python -m jaxrlhf.annotate --help)")
        command, rest = argv[1], argv[2:]
        if command == "bot":
            from jaxrlhf.feedback.scripted import Client, annotate_all, reward_model_judge

            if not FLAGS.token or not FLAGS.rm:
                raise ValueError("bot needs --token and --rm")
            judge = reward_model_judge(FLAGS.rm, FLAGS.noise, FLAGS.seed, FLAGS.tie_margin)
            print(json.dumps({"labelled": annotate_all(Client(FLAGS.url, FLAGS.token), judge, FLAGS.limit)}))
            return
        from jaxrlhf.feedback.store import Store

        store = Store(FLAGS.db, lease_s=60.0 * FLAGS.lease_minutes)
        if command == "add-annotator":
            if len(rest) != 1:
                raise ValueError("add-annotator takes one NAME")
            print(store.add_annotator(rest[0], admin=FLAGS.admin))
        elif command == "load":
            print(json.dumps(_load(store)))
        elif command == "export":
            from jaxrlhf.feedback.export import export

            if not FLAGS.out:
                raise ValueError("export needs --out=FILE")
            print(json.dumps(export(store, FLAGS.out, FLAGS.format, FLAGS.include_incomplete)))
        elif command == "report":
            from jaxrlhf.feedback.export import report

            result = report(store)
            if FLAGS.out:
                with open(FLAGS.out, "w") as f:
                    json.dump(result, f, indent=1)
            print(json.dumps(result, indent=1))
        elif command == "serve":
            if not 1 <= FLAGS.port <= 65535:
                raise ValueError(f"--port={FLAGS.port} must be in 1..65535")
            for line in _load(store):
                print(json.dumps(line), file=sys.stderr)
            import uvicorn

            from jaxrlhf.feedback.app import create_app

            app = create_app(store, secure_cookies=FLAGS.secure_cookies)
    if command == "serve":
        if FLAGS.host not in ("127.0.0.1", "localhost", "::1") and not FLAGS.secure_cookies:
            print(f"warning: serving on {FLAGS.host} over plain HTTP: tokens and cookies cross the network "
                  "unencrypted; put it behind HTTPS and pass --secure_cookies", file=sys.stderr)
        where = "PostgreSQL" if FLAGS.db.startswith(("postgresql://", "postgres://")) else FLAGS.db  # no password
        print(f"annotation server on http://{FLAGS.host}:{FLAGS.port}/ (database {where})", file=sys.stderr)
        uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    run_app(main)
