"""The Colab notebook runs on CPU: every cell after the install cell, with a short training run."""

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "colab_train_rm.ipynb"


def test_notebook_runs_on_cpu(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat comes with the test extras")
    nbclient = pytest.importorskip("nbclient", reason="nbclient comes with the test extras")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # jaxrlhf is installed already; the install cell would `pip install -e` the folder it runs in.
    assert "".join(code[0].source).startswith("# Install:")
    nb.cells = [c for c in nb.cells if c is not code[0]]
    train = [c for c in nb.cells if c.cell_type == "code" and "STEPS = 0" in "".join(c.source)]
    assert len(train) == 1
    train[0].source = train[0].source.replace("STEPS = 0", "STEPS = 4")  # a quick look, not the whole run
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env_before = dict(os.environ)
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path / "hf")
    # IPython runs `!` lines in $SHELL, else sh: CI has no SHELL, and dash's echo expands "\n".
    os.environ["SHELL"] = "/bin/sh"
    try:
        nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    summary = json.loads((tmp_path / "workdir" / "rm" / "eval.json").read_text())
    assert summary["n"] == 512 and 0.0 <= summary["accuracy"] <= 1.0
    assert (tmp_path / "workdir" / "rm" / "export" / "config.json").exists()
    outputs = {i: [o for o in c.get("outputs", [])] for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    assert not any(o.get("output_type") == "error" for outs in outputs.values() for o in outs)
    score_out = "".join(o.get("text", "") for o in outputs[max(outputs)] if o.get("output_type") == "stream")
    scores = [json.loads(line) for line in score_out.splitlines() if line.startswith("{")]
    assert len(scores) == 2 and all(isinstance(s["reward"], float) for s in scores), score_out[-2000:]
