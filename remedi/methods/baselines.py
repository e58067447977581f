"""The baselines that change the prompt's text, not the model (REMEDI's paper's comparisons).

- ``unedited``: the prompt as it is;
- ``prefix``: the case's context sentence before the prompt (``"<context>. <prompt>"``); the
  suites show the prompt without it in generated text, so that its words are not scored;
- ``replace``: the entity replaced by another entity known to have the new attribute (the suite
  chooses the replacement, from what it knows about its cases).
"""

from __future__ import annotations

from dataclasses import dataclass

from remedi import errors


@dataclass(frozen=True)
class TextEdit:
    """What a text method may read about the edit a prompt is asked under."""

    entity: str
    context: str = ""
    """The sentence stating the new attribute."""
    replacement: str | None = None
    """Another entity with the new attribute (``replace``)."""


def unedited(prompt: str, edit: TextEdit) -> str:
    """The prompt unchanged."""
    return prompt


def prefix(prompt: str, edit: TextEdit) -> str:
    """The context as a full sentence, then the prompt: trailing periods and spaces of the
    context become one period and a space (as REMEDI's reference)."""
    return edit.context.rstrip(". ") + ". " + prompt


def replace(prompt: str, edit: TextEdit) -> str:
    """Every mention of the entity replaced by ``edit.replacement``.

    Raises:
        errors.UsageError: No replacement entity was found for this edit.
    """
    if edit.replacement is None:
        raise errors.UsageError(
            f"no replacement entity for {edit.entity!r}; evaluate replace only on the edits "
            "a replacement was found for"
        )
    return prompt.replace(edit.entity, edit.replacement)
