"""Pure maths of RLHF: arrays in, float32 arrays (and metrics dicts of sums) out.

    losses      bradley_terry_loss, plackett_luce_loss, regression_loss, length_normalise
    metrics     pairwise_accuracy, kendall_tau(_groups), pearson, explained_variance
    gae         gae (masked reverse scan)
    kl          kl_penalty (k1/k2/k3), AdaptiveKLController, FixedKLController
    ppo         policy_loss, value_loss, entropy_from_logits
    whitening   masked_mean/var/whiten, clip_advantages, RunningMoments, update, normalise_and_clip
    logprobs    token_logprobs (chunked over the sequence), logprobs_from_logits

Import functions from their modules (`from jaxrlhf.ops.gae import gae`). Nothing is re-exported
here, so `jaxrlhf.ops.gae` always names the module, never the function of the same name.
"""
