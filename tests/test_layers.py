"""Imports only point down the layers of DESIGN.md; function-level imports count too.

    configs -> infra -> data / models / ops -> training -> rm / sft / rl -> entry points
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxrlhf"

LAYERS = {
    "configs": 0,
    "infra": 1,
    "data": 2, "models": 2, "ops": 2,
    "training": 3,
    "rm": 4, "sft": 4, "rl": 4, "po": 4, "feedback": 4,
    "train_rm": 5, "train_sft": 5, "train_ppo": 5, "train_dpo": 5,
    "eval_rm": 5, "score": 5, "compare": 5, "assets": 5, "plan": 5, "train_grpo": 5, "sample": 5, "export_gguf": 5,
    "serve": 5, "annotate": 5,
}
# Packages of one layer stay apart, except where named here, each with its reason.
ALLOWED_SIDEWAYS = {
    ("rl", "rm"): "PPO and compare score with a trained reward model (rm.load, rm.scoring)",
    ("po", "rm"): "DPO reads comparisons the reward trainer's way (rm.data) and is summarised as an implicit "
                  "reward model (rm.evaluate)",
    ("feedback", "rm"): "the scripted annotator ranks by a trained reward model's scores (rm.load)",
    ("models", "ops"): "the LM head's logits are ops.logprobs.lm_logits, shared with the log-prob path; "
                       "heads accumulate in float32 through ops.matmul",
}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "jaxrlhf" and len(parts) > 1 else None


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "jaxrlhf":
                for alias in node.names:
                    yield node.lineno, f"jaxrlhf.{alias.name}"
            else:
                yield node.lineno, node.module


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        me = _unit(".".join(rel.parts))
        if me is None or me == "__init__":  # the package's own __init__ imports nothing of it
            continue
        assert me in LAYERS, f"{path}: no layer for {me!r}; add it to LAYERS"
        for line, module in _imports(ast.parse(path.read_text(), str(path))):
            other = _unit(module)
            if other is None or other == me:
                continue
            assert other in LAYERS, f"{path}:{line}: imports {module}, which has no layer"
            upward = LAYERS[other] > LAYERS[me]
            sideways = LAYERS[other] == LAYERS[me] and (me, other) not in ALLOWED_SIDEWAYS
            if upward or sideways:
                out.append(f"{path.relative_to(root.parent)}:{line}: {me} (layer {LAYERS[me]}) imports {module} "
                           f"(layer {LAYERS[other]})")
    return out


def test_no_module_imports_a_higher_or_sibling_layer():
    assert violations() == []


def test_the_check_sees_function_level_and_package_imports(tmp_path):
    pkg = tmp_path / "jaxrlhf"
    (pkg / "models").mkdir(parents=True)
    (pkg / "ops").mkdir()
    (pkg / "models" / "a.py").write_text("def f():\n    from jaxrlhf import train_rm\n")
    (pkg / "ops" / "b.py").write_text("import jaxrlhf.training.loop\nfrom jaxrlhf.models import layers\n")
    found = violations(pkg)
    assert len(found) == 3, found
    assert "models (layer 2) imports jaxrlhf.train_rm (layer 5)" in found[0]
    assert "ops (layer 2) imports jaxrlhf.training.loop (layer 3)" in found[1]
    assert "ops (layer 2) imports jaxrlhf.models (layer 2)" in found[2]


def _defines_flags(module_path: Path) -> bool:
    return "flags.DEFINE_" in module_path.read_text()


def flag_module_imports(roots) -> list[str]:
    """Imports, from tests/scripts/notebooks, of an entry point that defines absl flags at import: two such
    modules in one process (pytest runs every test in one) define `--model` twice and the second import
    fails. Their functions live in libraries; the entry point only parses flags."""
    flagged = {f"jaxrlhf.{p.stem}" for p in PACKAGE.glob("*.py") if _defines_flags(p)}
    out = []
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            for line, module in _imports(ast.parse(path.read_text(), str(path))):
                if module in flagged:
                    out.append(f"{path}:{line}: imports {module}")
    return out


def test_no_test_or_script_imports_an_entry_point_that_defines_flags(tmp_path):
    repo = PACKAGE.parent
    assert {"jaxrlhf.eval_rm", "jaxrlhf.score"} <= {f"jaxrlhf.{p.stem}" for p in PACKAGE.glob("*.py")
                                                     if _defines_flags(p)}
    assert flag_module_imports([repo / "tests", repo / "scripts"]) == []
    (tmp_path / "t.py").write_text("def f():\n    from jaxrlhf.eval_rm import main\n")
    assert flag_module_imports([tmp_path]) == [f"{tmp_path / 't.py'}:2: imports jaxrlhf.eval_rm"]
