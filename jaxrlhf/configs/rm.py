"""Reward model: MiniLM-L6 on the shipped HH-RLHF harmless comparisons (the embedded default).

    python -m jaxrlhf.train_rm --config=configs/rm.py --config.workdir=/tmp/rm
"""

from jaxrlhf.configs.base import rm_defaults


def get_config():
    config = rm_defaults()
    config.model.name = "minilm"
    # Six layers unrolled rather than scanned: faster steps on CPU (no per-layer slicing of stacked weights
    # and gradients) for a little more compile per padded length (docs/benchmarks.md, "Reward-model step").
    config.model.scan_layers = False
    config.data.source = "builtin:hh_rlhf_harmless"
    config.data.eval_size = 512
    config.data.max_length = 256
    config.data.batch_size = 16
    config.optim.learning_rate = 1e-4
    config.train.epochs = 2
    return config
