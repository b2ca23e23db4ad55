#!/usr/bin/env bash
# The whole RLHF pipeline on this CPU: reward model, then PPO against it, then a blind A/B of the policy
# before and after PPO. Each stage resumes from its checkpoints when rerun; WORK picks the folder.
#
#   bash scripts/pipeline.sh                 # MiniLM RM (configs/rm.py), SmolLM2 PPO (configs/ppo.py)
#   SFT=1 bash scripts/pipeline.sh           # SFT the policy first (configs/sft.py) and start PPO from it
set -euo pipefail
WORK=${WORK:-workdir}
python -m jaxrlhf.assets fetch
python -m jaxrlhf.train_rm --config=configs/rm.py --config.workdir="$WORK/rm"
POLICY=smollm2
if [[ "${SFT:-0}" == 1 ]]; then
  python -m jaxrlhf.train_sft --config=configs/sft.py --config.workdir="$WORK/sft"
  POLICY="$WORK/sft/export"
fi
python -m jaxrlhf.train_ppo --config=configs/ppo.py --config.workdir="$WORK/ppo" \
  --config.policy.name="$POLICY" --config.reward_model.path="$WORK/rm/export"
python scripts/plot_ppo.py "$WORK/ppo" --out "$WORK/ppo/curves.png"
python -m jaxrlhf.compare --a="$POLICY" --b="$WORK/ppo/export" --rm="$WORK/rm/export" \
  --prompts=jaxrlhf/data/builtin/hh_rlhf_harmless_2048.jsonl.gz --limit=32 --max_new_tokens=48 \
  --out="$WORK/compare"
