"""Every malformed input of tests/malformed_cases.py ends with exit code 2 and one `error:` line that
names the problem: never a traceback, never a partial output that looks like a finished run."""

import concurrent.futures
import os

import pytest

from tests.malformed_cases import build_cases, run_case
from tests.rm_helpers import make_tiny_llama_dir, write_separable_pairs

pytestmark = pytest.mark.slow  # dozens of command-line runs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed")
    model = make_tiny_llama_dir(root / "model")
    pairs = write_separable_pairs(root / "pairs.jsonl", 32)
    cases = build_cases(root / "cases", model, pairs)
    env = dict(os.environ, HF_DATASETS_CACHE=str(root / "hf"), JAX_PLATFORMS="cpu")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # the CLIs mostly wait on imports
        outcomes = list(pool.map(lambda c: run_case(c, root, env), cases))
    return root, list(zip(cases, outcomes))


def test_at_least_twenty_cases_of_each_kind(results):
    _, pairs = results
    kinds = [case.kind for case, _ in pairs]
    assert len(pairs) >= 20 and {"data", "config", "model"} <= set(kinds)


def test_each_case_is_one_clear_line_and_exit_2(results):
    root, pairs = results
    failures = []
    for case, (code, last, stderr) in pairs:
        ok = code == 2 and last.startswith("error: ") and case.expected in last and "Traceback" not in stderr
        if not ok:
            failures.append(f"{case.name}: exit {code}, last line {last!r}")
    assert not failures, "\n".join(failures)
    # Nothing that passes for a finished run was left behind.
    assert not list(root.rglob("eval.json")) and not list(root.rglob("export"))
