"""REMEDI as a canonical-examples method: edit hidden states, not weights.

Each canonical example becomes one REMEDI edit: the *attribute* is the canonical statement
(prefix + suffix, e.g. "Ann works for Toyota"), the *entity* is the example's subject (the
task's subject field: the person, the country, the company). An editor (:mod:`remedi.editors`)
maps the statement's hidden state at its layer to a direction; the edited model adds that
direction at the last token of the last mention of the entity, at that layer, in any text
(an evaluation prompt, a hard negative, an unconditional or general text). Text that mentions
no edited entity runs through the model untouched, so its logits are bit-identical to the
unedited model's.

The editor trains on the canonical examples with the experiment's own loss (good / bad /
balance / good-v-bad, :func:`remedi.canon.scoring.training_loss`) and regularisers, through
:class:`EditedModel` in place of the model, so REMEDI is judged and optimised exactly as the
weight-editing methods are; only the editor's parameters move. A fresh editor starts at zero
(no edit, like LoRA's zero-initialised adapters: :func:`remedi.methods.remedi.new_editor`);
``method.remedi_editor`` names a trained editor directory to start from instead (``training.epochs: 0`` evaluates it as it is, as
"epoch" 1, like MEMIT's one edit).

Tasks whose canonical examples name no subject have no entity to edit: pronoun gender bias
and verb conjugation (templates about professions and verbs), and temporal (its
``entity_string`` is a Wikipedia URL, never mentioned in the text). :func:`remedi_trainable`
refuses them with a one-line error; country-capital (country), company-CEO (company) and
Stereoset (target group) can use REMEDI.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from remedi import editors, errors, hooks, models, precompute
from remedi.canon.config import MethodSettings
from remedi.canon.methods import method_hparams
from remedi.data.canonical import CanonicalExample
from remedi.methods import remedi
from remedi.methods.tuning import Trainable

logger = logging.getLogger(__name__)


def canonical_edit_samples(
    task_name: str, examples: Sequence[CanonicalExample]
) -> list[dict[str, str]]:
    """REMEDI samples of the canonical examples: entity = subject, attribute = statement.

    The statement (prefix + first suffix) is both the context and the attribute (its mean
    hidden state is the editor's input); the prompt is the prefix, which mentions the entity.

    Raises:
        UsageError: An example has no subject (the task names none), or its prefix does not
            mention it.
    """
    samples = []
    for number, example in enumerate(examples):
        if not example.subject:
            raise errors.UsageError(
                f"task {task_name} cannot use method remedi: its canonical examples name no "
                "subject entity to edit (REMEDI needs the task's subject field)"
            )
        # A subject missing from the prefix (a long prefix cut elsewhere) is read on its own.
        prompt = example.prefix if example.subject in example.prefix else example.subject
        samples.append(
            {
                "id": f"canonical-{number}",
                "entity": example.subject,
                "prompt": prompt,
                "context": example.prefix + example.suffix,
                "attribute": example.prefix + example.suffix,
            }
        )
    return samples


def mention_patterns(tokenizer: Any, entity: str) -> list[list[int]]:
    """The token sequences that spell ``entity`` in text: alone, and after a space."""
    patterns = []
    for spelling in (entity, " " + entity):
        ids = list(tokenizer(spelling, add_special_tokens=False)["input_ids"])
        if ids and ids not in patterns:
            patterns.append(ids)
    return patterns


def last_mentions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    patterns: Sequence[Sequence[Sequence[int]]],
) -> tuple[list[int], list[int]]:
    """Per row: which entity (index into ``patterns``) it mentions last, and the position of
    that mention's last token; ``-1`` for both where no entity is mentioned."""
    entity_of_row, position_of_row = [], []
    for row, ids in enumerate(input_ids.tolist()):
        length = int(attention_mask[row].sum()) if attention_mask is not None else len(ids)
        # Right padding (the canonical scorer's): the real tokens are the first `length`.
        ids = ids[:length]
        best_entity, best_end = -1, -1
        for entity, spellings in enumerate(patterns):
            for pattern in spellings:
                size = len(pattern)
                for start in range(len(ids) - size, -1, -1):
                    if start + size - 1 <= best_end:
                        break
                    if ids[start : start + size] == list(pattern):
                        best_entity, best_end = entity, start + size - 1
                        break
        entity_of_row.append(best_entity)
        position_of_row.append(best_end)
    return entity_of_row, position_of_row


class EditedModel(torch.nn.Module):
    """The LM with REMEDI edits of the canonical examples' entities applied on every forward.

    Called like the LM (``input_ids``, ``attention_mask``; right padding); rows mentioning an
    edited entity get that entity's direction (the mean over its canonical examples) added at
    the last token of its last mention; a row mentioning several edited entities is edited for
    the one mentioned last. Directions are recomputed from the editor on every call, so
    gradients reach the editor.
    """

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        editor: editors.Editor,
        inputs: precompute.EditorInputs,
        alpha: float = 1.0,
    ) -> None:
        super().__init__()
        self.lm = mt.model
        self.editor = editor
        self.inputs = inputs
        self.alpha = alpha
        self.entities = list(dict.fromkeys(inputs.entities))
        self.patterns = [mention_patterns(mt.tokenizer, entity) for entity in self.entities]
        # Which canonical example belongs to which entity, for averaging directions.
        membership = torch.zeros(len(self.entities), len(inputs.entities))
        for column, entity in enumerate(inputs.entities):
            membership[self.entities.index(entity), column] = 1.0
        self.averaging = membership / membership.sum(dim=1, keepdim=True)

    def entity_directions(self) -> torch.Tensor:
        """``(entities, hidden)``: each edited entity's direction, in float32."""
        directions = editors.directions_from_inputs(self.editor, self.inputs)
        return self.averaging.to(directions) @ directions

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        entity_of_row, position_of_row = last_mentions(input_ids, attention_mask, self.patterns)
        if all(entity < 0 for entity in entity_of_row):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        directions = self.entity_directions()
        index = torch.tensor([max(entity, 0) for entity in entity_of_row], device=directions.device)
        row_directions = directions[index]
        # Rows without an edited entity get an empty range: nothing is added to them.
        ranges = torch.tensor(
            [
                [position, position + 1] if entity >= 0 else [0, 0]
                for entity, position in zip(entity_of_row, position_of_row, strict=True)
            ],
            device=input_ids.device,
        )
        with hooks.add_directions(self.lm, self.editor.layer, row_directions, ranges, self.alpha):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def remedi_trainable(
    mt: models.ModelAndTokenizer,
    task_name: str,
    examples: Sequence[CanonicalExample],
    settings: MethodSettings,
    need_reference: bool,
) -> Trainable:
    """The LM edited by a REMEDI editor of ``examples``; the editor's parameters train.

    The reference for the KL regulariser is the unedited LM itself.
    """
    samples = canonical_edit_samples(task_name, examples)
    hparams = method_hparams(mt.name, settings)
    editor = remedi.new_editor(mt, hparams)
    mt.model.requires_grad_(False)
    inputs = precompute.editor_inputs(
        mt,
        samples,
        [editor.layer],
        with_targets=False,
        with_entities=editor.uses_entity,
        desc="canonical statements",
    )
    edited = EditedModel(mt, editor, inputs, hparams.alpha)
    parameters = [p for p in editor.parameters() if p.requires_grad]
    logger.info(
        "remedi at layer %d: %d entities, %d editor parameters",
        editor.layer,
        len(edited.entities),
        sum(p.numel() for p in parameters),
    )

    @contextlib.contextmanager
    def original() -> Iterator[torch.nn.Module]:
        yield mt.model

    return Trainable(edited, parameters, original if need_reference else None)
