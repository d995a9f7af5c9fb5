"""Helpers shared by test files: import them as ``tests.support.<module>`` (pytest runs from the repo root)."""
