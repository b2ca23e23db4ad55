"""Runs every malformed input of tests/malformed_cases.py through its CLI and writes the table of what
each produces into docs/malformed_inputs.md (the test suite checks the same cases).

    python scripts/malformed_inputs.py
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.malformed_cases import build_cases, run_case  # noqa: E402
from tests.rm_helpers import make_tiny_llama_dir, write_separable_pairs  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="jaxrlhf-malformed-") as tmp:
        root = Path(tmp)
        cases = build_cases(root / "cases", make_tiny_llama_dir(root / "model"),
                            write_separable_pairs(root / "pairs.jsonl", 32))
        env = dict(os.environ, HF_DATASETS_CACHE=str(root / "hf"), JAX_PLATFORMS="cpu")
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lambda c: run_case(c, root, env), cases))
        lines = ["# Malformed inputs", "",
                 "Written by `python scripts/malformed_inputs.py`; `tests/test_malformed_inputs.py` checks the same",
                 "cases: each ends with exit code 2 and the one line below on stderr, no traceback and no output",
                 "that passes for a finished run. Paths are shortened to their file name.", "",
                 "| # | kind | input | command | exit | stderr |", "|---|---|---|---|---|---|"]
        for i, (case, (code, last, stderr)) in enumerate(zip(cases, outcomes), 1):
            shown = last.replace(str(root / "cases") + "/", "").replace(str(root) + "/", "").replace("|", "\\|")
            ok = code == 2 and last.startswith("error: ") and "Traceback" not in stderr
            lines.append(f"| {i} | {case.kind} | {case.name} | `{case.command}` | {code}{'' if ok else ' (!)'} "
                         f"| `{shown}` |")
    out = ROOT / "docs" / "malformed_inputs.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
