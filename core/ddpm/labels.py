"""Class labels of engine models, as names, indices or English digit words (torch-free)."""

from __future__ import annotations

from core.errors import InputError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def resolve_label(labels: list[str], text: str | int) -> int:
    """Index of ``text`` in ``labels`` (case-insensitive; "seven" finds "7"). Raises InputError on field ``prompt``."""
    t = str(text).strip().lower()
    names = [n.lower() for n in labels]
    if t in names:
        return names.index(t)
    if t in DIGIT_WORDS and str(DIGIT_WORDS.index(t)) in names:
        return names.index(str(DIGIT_WORDS.index(t)))
    raise InputError(
        f"the prompt must name a label of this model: one of {labels}", field="prompt", code="unknown_label"
    )
