"""Step costs in the metrics (tokens/s, model FLOP/s by 6N, MFU where a peak is known, peak memory) and a
profiler trace of chosen steps."""

import json

import numpy as np
import pytest

from jaxrlhf.training import observe


def test_flops_per_token_counts_6n_for_trainable_and_4n_for_frozen_parameters():
    assert observe.StepCost.of(trainable_params=10, frozen_params=100).flops_per_token == 6 * 10 + 4 * 100


def test_metrics_by_hand_and_mfu_only_with_a_known_peak(monkeypatch):
    cost = observe.StepCost(flops_per_token=1e9)
    m = cost.metrics(tokens=2000, seconds=4.0)
    assert m["tokens_per_s"] == 500.0
    assert m["model_tflops_per_s"] == pytest.approx(1e9 * 2000 / 4.0 / 1e12)
    assert "mfu" not in m  # a CPU has no entry in PEAK_FLOPS
    monkeypatch.setattr(observe, "peak_flops", lambda device=None: 1e12)
    assert cost.metrics(tokens=2000, seconds=4.0)["mfu"] == pytest.approx(0.5)
    assert cost.metrics(tokens=0, seconds=4.0) == {}


def test_peaks_by_device_kind():
    class Device:
        def __init__(self, kind):
            self.device_kind = kind

    assert observe.peak_flops(Device("NVIDIA H200")) == 989e12
    assert observe.peak_flops(Device("TPU v5 lite")) == 197e12
    assert observe.peak_flops(Device("cpu")) is None


def test_batch_tokens_counts_every_id_array():
    batch = {"chosen_ids_BxT": np.zeros((4, 16)), "rejected_ids_BxT": np.zeros((4, 16)),
             "chosen_mask_BxT": np.zeros((4, 16)), "weight_B": np.zeros(4)}
    assert observe.batch_tokens(batch) == 128


def test_profile_steps_spec_is_checked(tmp_path):
    assert observe.Profiler("", tmp_path).first == 0
    for bad in ("3", "a:b", "0:2", "5:4"):
        with pytest.raises(ValueError, match="train.profile_steps"):
            observe.Profiler(bad, tmp_path)


@pytest.mark.slow
def test_rm_run_logs_costs_and_writes_a_trace_of_the_chosen_steps(tmp_path):
    from jaxrlhf.train_rm import train
    from tests.helpers.data import write_separable_pairs
    from tests.helpers.models import make_tiny_llama_dir
    from tests.helpers.runs import tiny_rm_config

    config = tiny_rm_config(make_tiny_llama_dir(tmp_path / "model"), write_separable_pairs(tmp_path / "p.jsonl", 96),
                            tmp_path / "work")
    config.train.epochs, config.train.profile_steps = 2, "3:4"
    train(config)
    rows = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/tokens_per_s" in r]
    assert logged and all(r["train/model_tflops_per_s"] > 0 for r in logged)
    traces = list((tmp_path / "work" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
