"""Commands that use the test suite's helpers to write docs (run from the repository root)."""
