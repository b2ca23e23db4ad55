"""Score texts with a reward model, for a person to look at.

    printf '%s\\n' '{"prompt": "Human: hi\\n\\nAssistant:", "response": " Hello!"}' \\
        | python -m jaxrlhf.score --model=DIR
    python -m jaxrlhf.score --model=DIR --input=texts.txt

Each input line is a JSON object with `prompt` and `response` (or `text`), or plain text in which a
literal backslash-n stands for a newline; texts are read as they are, so give them in the format the
model was trained on (HH: prompt "\\n\\nHuman: ...\\n\\nAssistant:", response " ..."). Prints one JSON
line per text: the reward (divided by the response length if the model was trained so, as PPO reads it)
and, when the model was exported with training statistics, the reward normalised by them.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from jaxrlhf.infra.runtime import cli_errors, run_app
from jaxrlhf.rm.texts import parse_line, score_texts

flags.DEFINE_string("model", None, "Exported RM directory or train_rm workdir.", required=True)
flags.DEFINE_string("input", "-", "File of texts, one per line ('-': stdin).")
flags.DEFINE_integer("max_length", 512, "Tokens per sequence (prompt cut from the left).")
flags.DEFINE_integer("batch_size", 16, "Texts per forward pass.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    with cli_errors():
        stream = sys.stdin if FLAGS.input == "-" else open(FLAGS.input)
        pairs = [parse_line(line, i + 1) for i, line in enumerate(stream) if line.strip()]
        if not pairs:
            raise ValueError("no texts to score (give them on stdin or with --input)")
        for row in score_texts(FLAGS.model, pairs, FLAGS.max_length, FLAGS.batch_size):
            print(json.dumps(row))


if __name__ == "__main__":
    run_app(main)
