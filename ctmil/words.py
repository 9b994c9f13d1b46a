"""Counted nouns in messages: "1 case", "2 cases", never "1 cases" (one home, so every summary line agrees)."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``"1 case"``, ``"3 cases"``; ``nouns`` for irregular plurals (``plural(2, "study", "studies")``)."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"
