"""Serve a reward model over HTTP (the routes and their JSON: jaxrlhf/rm/serving.py).

    python -m jaxrlhf.serve --model=DIR [--port=8000 --token=SECRET]
    curl -s localhost:8000/score -H 'Authorization: Bearer SECRET' \\
        -d '{"pairs": [{"prompt": "\\n\\nHuman: hi\\n\\nAssistant:", "response": " Hello!"}]}'

DIR is an export or a train_rm workdir. Texts score as `python -m jaxrlhf.score` scores them; requests that
arrive together are scored in one forward pass (up to --max_batch texts, waiting at most --max_wait_ms).
OpenRLHF's PPO can use it with `--remote_rm_url http://HOST:PORT/get_reward` (`?token=SECRET` with a token).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import flags

from jaxrlhf.infra.runtime import cli_errors, run_app

flags.DEFINE_string("model", None, "Exported RM directory or train_rm workdir.", required=True)
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (only this machine by default).")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
flags.DEFINE_string("token", None, "Bearer token every request must carry (default: $JAXRLHF_SERVE_TOKEN; none).")
flags.DEFINE_integer("max_batch", 32, "Most texts scored in one forward pass.")
flags.DEFINE_float("max_wait_ms", 10.0, "Longest a request waits for others to share its forward pass.")
flags.DEFINE_integer("max_length", 512, "Tokens per sequence (prompt cut from the left).")
flags.DEFINE_integer("max_request_bytes", 1_000_000, "Largest request body accepted.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    with cli_errors():
        if not 1 <= FLAGS.port <= 65535:
            raise ValueError(f"--port={FLAGS.port} must be in 1..65535")
        if FLAGS.max_batch < 1:
            raise ValueError(f"--max_batch={FLAGS.max_batch} must be >= 1")
        if FLAGS.max_wait_ms < 0:
            raise ValueError(f"--max_wait_ms={FLAGS.max_wait_ms} must be >= 0")
        token = FLAGS.token or os.environ.get("JAXRLHF_SERVE_TOKEN") or None
        import uvicorn

        from jaxrlhf.rm.load import load_trained_rm
        from jaxrlhf.rm.serving import create_app

        app = create_app(load_trained_rm(FLAGS.model), model_name=Path(FLAGS.model).name, max_batch=FLAGS.max_batch,
                         max_wait_ms=FLAGS.max_wait_ms, max_length=FLAGS.max_length,
                         max_request_bytes=FLAGS.max_request_bytes, token=token, warmup=True)
    if token is None and FLAGS.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {FLAGS.host} without a token: anyone who can reach it can use it", file=sys.stderr)
    # No access log: a busy reward server would log every request, and `?token=` would land in the log.
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level="info", access_log=False)


if __name__ == "__main__":
    run_app(main)
