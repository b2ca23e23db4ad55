"""Every malformed input of tests/helpers/malformed.py ends with exit code 2 and one `error:` line that
names the problem: never a traceback, never a partial output that looks like a finished run."""

import pytest

from tests.helpers.malformed import run_all_cases

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # dozens of command-line runs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed")
    return root, run_all_cases(root)


def test_at_least_fifty_cases_over_every_kind_and_command(results):
    _, pairs = results
    kinds = {case.kind for case, _ in pairs}
    commands = {case.command for case, _ in pairs}
    assert len(pairs) >= 50 and {"data", "config", "model"} <= kinds
    assert {"train_rm", "train_sft", "train_ppo", "train_dpo", "eval_rm", "score", "compare",
            "export_gguf"} <= commands


def test_each_case_is_one_clear_line_and_exit_2(results):
    root, pairs = results
    failures = []
    for case, (code, last, stderr) in pairs:
        ok = code == 2 and last.startswith("error: ") and case.expected in last and "Traceback" not in stderr
        if not ok:
            failures.append(f"{case.name}: exit {code}, last line {last!r}")
    assert not failures, "\n".join(failures)
    # Nothing that passes for a finished run was left behind.
    assert not list(root.rglob("eval.json")) and not list(root.rglob("export")) and not list(root.rglob("key.json"))
    assert not list(root.rglob("*.gguf"))  # a refused export leaves no file, not even a partial one
