#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (several hosts, e.g. v4-16 or v5e-16).
#
# All workers run the same command at the same time (`gcloud ... ssh --worker=all`): each installs
# jaxrlhf, fetches the model assets, then starts the trainer with --config.distributed.coordinator=auto,
# so `jax.distributed.initialize()` finds the other workers by itself. Each worker then tokenises the
# data but loads only its rows of every global batch; parameters stay identical on all of them.
#
#   TPU=my-pod ZONE=us-central2-b WORKDIR=/mnt/shared/rm bash scripts/tpu_pod.sh [--config.KEY=VALUE ...]
#
#   TPU, ZONE   the TPU VM slice (`gcloud compute tpus tpu-vm create`); PROJECT is optional
#   WORKDIR     a folder every worker sees at the same path (gcsfuse or Filestore mount): Orbax writes one
#               checkpoint there from all workers; worker 0 alone writes metrics, eval.json and export/
#   REPO, REF   where to get jaxrlhf (default: this checkout's origin remote and current commit)
#   TRAINER     jaxrlhf.train_rm (default) or jaxrlhf.train_sft; CONFIG defaults to configs/rm.py
#   ASSETS      assets to fetch on each worker (default: minilm; "" fetches all)
#   SETUP=0     skip clone/install/fetch (a rerun, e.g. resuming after a preemption)
#   DRY_RUN=1   print the gcloud command instead of running it
#
# A rerun of the same command resumes from the newest complete checkpoint in WORKDIR.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR to a folder all workers share}"
REPO=${REPO:-$(git remote get-url origin 2>/dev/null || true)}
REF=${REF:-$(git rev-parse HEAD 2>/dev/null || echo main)}
TRAINER=${TRAINER:-jaxrlhf.train_rm}
CONFIG=${CONFIG:-configs/rm.py}
ASSETS=${ASSETS-minilm}
SETUP=${SETUP:-1}

overrides=""
(( $# )) && overrides=$(printf '%q ' "$@")
remote="set -euo pipefail; "
if [[ "$SETUP" == 1 ]]; then
  : "${REPO:?set REPO to a git URL of jaxrlhf the workers can clone}"
  remote+="[ -d jaxrlhf ] || git clone -q $(printf '%q' "$REPO") jaxrlhf; "
  remote+="cd jaxrlhf && git fetch -q origin && git checkout -q $(printf '%q' "$REF"); "
  remote+="pip install -q -U 'jax[tpu]' && pip install -q -e . && python -m jaxrlhf.assets fetch $ASSETS; "
else
  remote+="cd jaxrlhf; "
fi
remote+="python -m $TRAINER --config=$(printf '%q' "$CONFIG") --config.workdir=$(printf '%q' "$WORKDIR") "
remote+="--config.distributed.coordinator=auto $overrides"

cmd=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$remote")
[[ -n "${PROJECT:-}" ]] && cmd+=(--project="$PROJECT")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  "${cmd[@]}"
fi
