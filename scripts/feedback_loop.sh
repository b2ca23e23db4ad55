#!/usr/bin/env bash
# The human-feedback loop on this CPU, with scripted annotators standing in for people:
#
#   policy -> sample K responses -> annotate (ranking) -> export -> train_rm on the export
#          -> PPO against the new reward model -> compare before/after -> annotate (A/B) -> report
#
# The scripted annotators label through the annotation server's HTTP API, exactly as a browser does; they
# judge by a "judge" reward model (MiniLM trained on the shipped HH-RLHF comparisons, so its taste is the
# HH raters') plus per-annotator noise, so they disagree as people do. Replace the `bot` lines by people
# signing in at http://127.0.0.1:$PORT/ with the printed tokens, and the loop is the real one.
#
#   bash scripts/feedback_loop.sh                      # small defaults: about 25 minutes on 2 CPU cores
#   PROMPTS=200 PPO_ITERATIONS=25 bash scripts/feedback_loop.sh
#
# Everything lands in $WORK (default workdir/feedback): the judge, samples.jsonl, labels.sqlite,
# rankings.jsonl, rm/, ppo/, compare/ and report.json. Rerunning resumes the trainers from their checkpoints.
set -euo pipefail
WORK=${WORK:-workdir/feedback}
POLICY=${POLICY:-smollm2}          # the SFT model: an asset alias, an HF directory or an export/
PROMPTS=${PROMPTS:-48}             # prompts sampled for ranking
K=${K:-4}                          # responses per prompt
PER_ITEM=${PER_ITEM:-3}            # annotators per item
ANNOTATORS=${ANNOTATORS:-3}
NOISE=${NOISE:-0.3}                # std of the annotators' noise, in reward units of the judge
PPO_ITERATIONS=${PPO_ITERATIONS:-8}
AB_PROMPTS=${AB_PROMPTS:-32}
PORT=${PORT:-8011}
DATA=jaxrlhf/data/builtin/hh_rlhf_harmless_2048.jsonl.gz
DB="$WORK/labels.sqlite"
mkdir -p "$WORK"
stage() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

stage "fetch the models"
python -m jaxrlhf.assets fetch minilm smollm2

stage "judge: a reward model on real HH comparisons, the scripted annotators' taste"
python -m jaxrlhf.train_rm --config=configs/rm.py --config.workdir="$WORK/judge" --config.train.epochs=1

stage "sample $K responses to $PROMPTS prompts"
# Prompts from the end of the file (the judge's held-out side is not what matters here: these are new
# responses by the policy, never seen by the judge).
[[ -s "$WORK/samples.jsonl" ]] || python -m jaxrlhf.sample --policy="$POLICY" --prompts="$DATA" --limit="$PROMPTS" \
  --k="$K" --temperature=1.0 --top_p=0.95 --max_new_tokens=48 --seed=1 --out="$WORK/samples.jsonl"

if [[ ! -s "$WORK/tokens.txt" ]]; then  # one sign-in token per annotator, kept for a rerun
  for i in $(seq 1 "$ANNOTATORS"); do python -m jaxrlhf.annotate add-annotator "bot$i" --db="$DB"; done \
    > "$WORK/tokens.tmp" && mv "$WORK/tokens.tmp" "$WORK/tokens.txt"
fi
mapfile -t tokens < "$WORK/tokens.txt"

serve_and_annotate() {  # $1: tasks (file or compare folder); $2: bot options
  python -m jaxrlhf.annotate serve --db="$DB" --tasks="$1" --per_item="$PER_ITEM" --port="$PORT" &
  local server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  python - "$PORT" <<'EOF'
import sys, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/login", timeout=2)
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("the annotation server did not start")
EOF
  local bots=()
  for i in "${!tokens[@]}"; do
    # shellcheck disable=SC2086
    python -m jaxrlhf.annotate bot --url="http://127.0.0.1:$PORT" --token="${tokens[$i]}" \
      --rm="$WORK/judge/export" --seed="$i" $2 &
    bots+=($!)
  done
  for pid in "${bots[@]}"; do wait "$pid"; done
  kill "$server"; wait "$server" 2>/dev/null || true
  trap - EXIT
}

stage "annotate: $ANNOTATORS scripted annotators rank through the HTTP API, $PER_ITEM per item"
serve_and_annotate "$WORK/samples.jsonl" "--noise=$NOISE"
python -m jaxrlhf.annotate export --db="$DB" --out="$WORK/rankings.jsonl"

stage "train a reward model on the annotators' rankings"
python -m jaxrlhf.train_rm --config=configs/rm.py --config.workdir="$WORK/rm" --config.data.source="$WORK/rankings.jsonl" \
  --config.data.eval_size=8 --config.data.min_agreement=0.5 --config.train.epochs=3

stage "PPO against the new reward model ($PPO_ITERATIONS iterations)"
python -m jaxrlhf.train_ppo --config=configs/ppo.py --config.workdir="$WORK/ppo" --config.policy.name="$POLICY" \
  --config.reward_model.path="$WORK/rm/export" --config.train.iterations="$PPO_ITERATIONS"

stage "compare the policy before (A) and after (B) PPO on $AB_PROMPTS prompts"
[[ -s "$WORK/compare/key.json" ]] || python -m jaxrlhf.compare --a="$POLICY" --b="$WORK/ppo/export" \
  --rm="$WORK/rm/export" --prompts="$DATA" --limit="$AB_PROMPTS" --max_new_tokens=48 --out="$WORK/compare"

stage "A/B: the scripted annotators judge before vs after"
serve_and_annotate "$WORK/compare" "--noise=$NOISE --tie_margin=0.05"
python -m jaxrlhf.annotate report --db="$DB" --out="$WORK/report.json"
stage "done: $WORK/report.json"
