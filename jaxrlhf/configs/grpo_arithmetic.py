"""GRPO with a verifiable reward: SmolLM2-135M-Instruct on generated arithmetic word problems.

    python -m jaxrlhf.train_grpo --config=configs/grpo_arithmetic.py
    python -m jaxrlhf.sample --model=workdir/grpo_arithmetic/export --prompts=problems.jsonl --k=4

Training problems come from task.seed, the held-out ones from task.eval_seed (rl.arithmetic); the reward is
1 when the response's last number is the answer (rl.verifiable.exact_match). Every eval_every iterations
the held-out problems are answered greedily: eval/reward/exact_match is the accuracy.
"""

from jaxrlhf.configs.base import grpo_defaults


def get_config():
    config = grpo_defaults()
    config.workdir = "workdir/grpo_arithmetic"
    config.policy.name = "smollm2"
    config.task.name = "arithmetic"
    config.task.n_eval = 64
    config.data.max_prompt_length = 64          # the longest problem renders to 63 tokens with the chat template
    config.data.pad_to_multiple = 64            # one prompt width: every iteration reuses the compiled steps
    config.sampling.max_new_tokens = 16         # "Answer with the number only": a few tokens
    config.sampling.temperature = 1.0
    config.rewards.functions = "exact_match"
    config.grpo.algorithm = "grpo"
    config.grpo.group_size = 8
    config.grpo.rollout_batch_size = 8          # 64 responses per iteration
    config.grpo.minibatch_size = 64             # one update per rollout (TRL's default): no old-logprob pass
    config.grpo.epochs = 1
    config.actor_optim.learning_rate = 1e-5
    config.train.iterations = 40
    config.train.eval_every = 10
    return config
