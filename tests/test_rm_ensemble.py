"""The uncertainty-penalised ensemble of reward models against its formula, mean - k * std of each member's
score, computed here from the members scored one by one; and the config block that builds it."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from jaxrlhf.data.prompts import prompt_of_text
from jaxrlhf.infra import sharding as shd
from jaxrlhf.rm.ensemble import EnsembleScorer, reward_scorer
from jaxrlhf.rm.load import load_trained_rm
from tests.helpers.models import make_tiny_llama_dir


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    return [str(make_tiny_llama_dir(root / f"rm{seed}", seed=seed)) for seed in range(3)]


def test_the_ensemble_scores_mean_minus_k_std_of_its_members(members):
    mesh = shd.make_mesh()
    rms = [load_trained_rm(p, mesh) for p in members]
    scorers = [rm.scorer(max_length=32) for rm in rms]
    prompts = [prompt_of_text(t) for t in ("one two", "red green blue", "hello world")]
    responses = ["yes", "no no", "good bad good"]
    each_MxN = np.stack([s.score_texts(prompts, responses) for s in scorers]).astype(np.float64)
    assert np.ptp(each_MxN, axis=0).min() > 1e-3  # the members disagree, so the penalty is exercised
    ensemble = EnsembleScorer(scorers, k=0.5)
    want = each_MxN.mean(0) - 0.5 * each_MxN.std(0)
    np.testing.assert_allclose(ensemble.score_texts(prompts, responses), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.device_get(ensemble.score_global(prompts, responses, mesh))), want,
                               rtol=1e-5, atol=1e-6)
    cfg = ml_collections.ConfigDict({"ensemble": ",".join(members[1:]), "uncertainty_k": 0.5})
    built = reward_scorer(cfg, rms[0], mesh, max_length=32)
    np.testing.assert_allclose(built.score_texts(prompts, responses), want, rtol=1e-5, atol=1e-6)
    assert reward_scorer(ml_collections.ConfigDict({"ensemble": ""}), rms[0], mesh, 32).__class__.__name__ == \
        "RewardScorer"
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleScorer(scorers[:1], 1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        EnsembleScorer(scorers, -1.0)
