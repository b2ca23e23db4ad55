"""The benchmark scripts' one way of (re)writing their section of a markdown file such as docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path


def write_section(out: str | Path, section: str, mark_start: str, mark_end: str) -> None:
    """Replaces the text from `mark_start` (up to its first " (") through `mark_end` in the file `out` by
    `section`, which begins and ends with those marks; appends `section` when the file has none yet.
    An empty `out` (a script's `--out ''`) writes nothing."""
    if not out:
        return
    path = Path(out)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start, end = text.find(mark_start.split(" (")[0]), text.find(mark_end)
    if start >= 0 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(mark_end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {out}")
