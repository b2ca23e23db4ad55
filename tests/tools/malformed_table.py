"""Runs every malformed input of tests/helpers/malformed.py through its CLI and writes the table of what
each produces into docs/malformed_inputs.md (tests/test_malformed_inputs.py checks the same cases).

    python -m tests.tools.malformed_table     # from the repository root
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.helpers import REPO_ROOT
from tests.helpers.malformed import run_all_cases


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="jaxrlhf-malformed-") as tmp:
        root = Path(tmp)
        results = run_all_cases(root)
        lines = ["# Malformed inputs", "",
                 "Written by `python -m tests.tools.malformed_table`; `tests/test_malformed_inputs.py` checks the same",
                 "cases: each ends with exit code 2 and the one line below on stderr, no traceback and no output",
                 "that passes for a finished run. Paths are shortened to their file name.", "",
                 "| # | kind | input | command | exit | stderr |", "|---|---|---|---|---|---|"]
        for i, (case, (code, last, stderr)) in enumerate(results, 1):
            shown = last.replace(str(root / "cases") + "/", "").replace(str(root) + "/", "").replace("|", "\\|")
            ok = code == 2 and last.startswith("error: ") and "Traceback" not in stderr
            lines.append(f"| {i} | {case.kind} | {case.name} | `{case.command}` | {code}{'' if ok else ' (!)'} "
                         f"| `{shown}` |")
    out = REPO_ROOT / "docs" / "malformed_inputs.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
