"""Token ranges and hidden states that editors read, computed once per dataset.

An editor maps the LM's representation of an *attribute* (the mean hidden state over the
attribute's tokens in the context, at the edit layer) and optionally of the *entity* (its last
token's hidden state, or the mean over its tokens, with the entity encoded on its own as in the
REMEDI reference) to a direction added at the entity's mention in a prompt. This module finds
those token ranges and hidden states, in batches on the model's device, and packs them in
:class:`EditorInputs`, which training reuses every epoch.

Token ranges come from the tokenizer's offset mapping: a token belongs to a mention if its
character span overlaps the mention's. This is robust to BPE merges and to byte-level offsets
that include the leading space (GPT-2's ``' Borna'`` spans characters 4..10 of
``"Xavi Borna..."``). When a string mentions the entity more than once, the **last** mention
is used, everywhere: the entity in prompts, the attribute in contexts, and the entity in any
prompt an editor is applied to (the last mention is the one nearest the prediction).

Ranges are ``[start, end)`` token indices. Stored ranges are in *unpadded* coordinates (index 0
is the first real token of the text); :func:`remedi.hooks.padded_token_ranges` moves them into
a padded batch, whichever side it pads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeAlias

import datasets
import torch
import transformers
from tqdm.auto import tqdm

from remedi import errors, hooks, models

logger = logging.getLogger(__name__)

DEFAULT_PRECOMPUTE_BATCH_SIZE = 64

Tokenizer = transformers.PreTrainedTokenizerBase
Samples: TypeAlias = "datasets.Dataset | Sequence[Mapping[str, Any]]"


def tokenize(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    device: torch.device | str | None = None,
    padding_side: str | None = None,
) -> tuple[transformers.BatchEncoding, torch.Tensor]:
    """Tokenize a batch with padding; return the model inputs and the offset mapping.

    Precompute and training pad on the right, so that models with absolute positions see each
    text at the positions it has on its own.
    """
    encoded = tokenizer(list(texts), return_offsets_mapping=True)
    return pad_token_rows(tokenizer, encoded, device, padding_side)


def pad_token_rows(
    tokenizer: Tokenizer,
    rows: Mapping[str, Sequence[Sequence[Any]]],
    device: torch.device | str | None = None,
    padding_side: str | None = None,
) -> tuple[transformers.BatchEncoding, torch.Tensor]:
    """Pad unpadded tokenizer output (``input_ids``, ``attention_mask``, ``offset_mapping``,
    ...: one list per text) to the longest row; return the model inputs and the offset mapping.

    The same tensors as the tokenizer's ``padding="longest"``, in one step per field, which
    takes a fraction of its time.
    """
    side = padding_side or tokenizer.padding_side
    width = max((len(ids) for ids in rows["input_ids"]), default=0)
    if tokenizer.pad_token_id is None and any(len(ids) < width for ids in rows["input_ids"]):
        raise errors.UsageError(
            "the tokenizer has no pad token, which batches of texts of different lengths need; "
            "set tokenizer.pad_token (remedi.models.load_model uses the end-of-text token)"
        )
    pad_values: dict[str, Any] = {
        "input_ids": tokenizer.pad_token_id,
        "token_type_ids": tokenizer.pad_token_type_id,
        "offset_mapping": (0, 0),
    }

    def padded(field: Sequence[Sequence[Any]], value: Any) -> torch.Tensor:
        fills = [[value] * (width - len(row)) for row in field]
        return torch.tensor(
            [
                [*row, *fill] if side == "right" else [*fill, *row]
                for row, fill in zip(field, fills, strict=True)
            ],
            dtype=torch.long,
        )

    tensors = {key: padded(field, pad_values.get(key, 0)) for key, field in rows.items()}
    offset_mapping = tensors.pop("offset_mapping")
    inputs = transformers.BatchEncoding(tensors)
    if device is not None:
        inputs = inputs.to(device)
    return inputs, offset_mapping


def find_char_spans(
    strings: Sequence[str], substrings: Sequence[str], names: Sequence[str] | None = None
) -> torch.Tensor:
    """Character span ``[start, end)`` of the last occurrence of each substring, shape (n, 2).

    Raises:
        ValueError: A substring does not occur in its string; names the sample.
    """
    if len(strings) != len(substrings):
        raise ValueError(f"got {len(strings)} strings but {len(substrings)} substrings")
    starts = [
        string.rfind(substring) for string, substring in zip(strings, substrings, strict=True)
    ]
    for index, start in enumerate(starts):
        if start < 0 or not substrings[index]:
            name = names[index] if names is not None else f"#{index}"
            raise errors.SampleError(
                f"sample {name}: {substrings[index]!r} does not occur in {strings[index]!r}; "
                "every prompt must mention its entity (and every context its attribute)"
            )
    spans = torch.tensor(starts, dtype=torch.long)
    lengths = torch.tensor([len(substring) for substring in substrings], dtype=torch.long)
    return torch.stack([spans, spans + lengths], dim=-1)


def token_ranges_from_char_spans(
    char_spans: torch.Tensor,
    offset_mapping: torch.Tensor,
    attention_mask: torch.Tensor,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Token ranges ``[start, end)`` covering each character span, in padded coordinates.

    A token belongs to the span if its characters overlap it. Special and padding tokens
    (empty offsets) never do.
    """
    offset_mapping = offset_mapping.to(char_spans.device)
    attention_mask = attention_mask.to(char_spans.device).bool()
    token_starts, token_ends = offset_mapping[..., 0], offset_mapping[..., 1]
    in_span = (
        (token_starts < char_spans[:, 1:2])
        & (token_ends > char_spans[:, 0:1])
        & (token_ends > token_starts)
        & attention_mask
    )
    found = in_span.any(dim=-1)
    if not bool(found.all()):
        index = int((~found).nonzero()[0])
        name = names[index] if names is not None else f"#{index}"
        raise errors.SampleError(
            f"sample {name}: no token covers characters {char_spans[index].tolist()}; the text "
            "was probably truncated"
        )
    seq_len = in_span.shape[-1]
    first = in_span.int().argmax(dim=-1)
    last = seq_len - 1 - in_span.flip(-1).int().argmax(dim=-1)
    return torch.stack([first, last + 1], dim=-1)


def first_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Padded index of each row's first real token (0 with right padding)."""
    return attention_mask.int().argmax(dim=-1)


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Padded index of each row's last real token."""
    return attention_mask.shape[-1] - 1 - attention_mask.flip(-1).int().argmax(dim=-1)


def unpad_token_ranges(token_ranges: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Move padded-coordinate ranges to unpadded coordinates (inverse of padding)."""
    return token_ranges - first_token_positions(attention_mask).to(token_ranges.device)[:, None]


def find_token_ranges(
    tokenizer: Tokenizer,
    strings: Sequence[str],
    substrings: Sequence[str],
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Unpadded token ranges of the last mention of each substring in its string, (n, 2)."""
    return _token_ranges_and_lengths(tokenizer, strings, substrings, names)[0]


def _token_ranges_and_lengths(
    tokenizer: Tokenizer,
    strings: Sequence[str],
    substrings: Sequence[str],
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`find_token_ranges`, and the token count of each string, from one tokenization."""
    char_spans = find_char_spans(strings, substrings, names)
    inputs, offset_mapping = tokenize(tokenizer, strings)
    ranges = token_ranges_from_char_spans(char_spans, offset_mapping, inputs.attention_mask, names)
    return unpad_token_ranges(ranges, inputs.attention_mask), inputs.attention_mask.sum(dim=-1)


def last_token_ranges(token_ranges: torch.Tensor) -> torch.Tensor:
    """Shrink each range to its last token."""
    return torch.stack([token_ranges[:, 1] - 1, token_ranges[:, 1]], dim=-1)


def range_mask(token_ranges: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Boolean (n, seq_len) mask of the positions inside each range."""
    positions = torch.arange(seq_len, device=token_ranges.device)
    return (positions >= token_ranges[:, :1]) & (positions < token_ranges[:, 1:])


def average_in_ranges(hiddens: torch.Tensor, token_ranges: torch.Tensor) -> torch.Tensor:
    """Mean hidden state over each row's range (padded coordinates), shape (n, hidden)."""
    mask = range_mask(token_ranges.to(hiddens.device), hiddens.shape[1]).to(hiddens.dtype)
    total = torch.einsum("bs,bsh->bh", mask, hiddens)
    return total / mask.sum(dim=-1, keepdim=True).clamp(min=1)


def target_token_ids(tokenizer: Tokenizer, targets: Sequence[str]) -> torch.Tensor:
    """First token id of each target as it would follow a prompt (``" " + target``), (n,)."""
    encoded = tokenizer([" " + target for target in targets], add_special_tokens=False)
    return torch.tensor([ids[0] for ids in encoded["input_ids"]], dtype=torch.long)


@torch.no_grad()
def hiddens_at_layers(
    mt: models.ModelAndTokenizer, inputs: transformers.BatchEncoding, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Residual stream (batch, seq, hidden) after each of ``layers`` for a tokenized batch.

    The model runs only up to the deepest of ``layers`` (no LM head, no KV cache).
    """
    with hooks.record_hiddens(mt.model, layers) as recorded:
        hooks.run_until_layer(mt.model, max(layers), inputs)
    return {layer: recorded[layer] for layer in layers}


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices ``0..n-1`` in batches of similar lengths (shortest first): less padding.

    Only for computations whose result for a row does not depend on the other rows.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@dataclass
class MentionHiddens:
    """Hidden states of one mention per text (see :func:`span_hiddens`)."""

    token_ranges: torch.Tensor
    """Unpadded ``[start, end)`` of the mention, (n, 2)."""
    average: dict[int, torch.Tensor]
    """Mean over the mention's tokens, (n, hidden) float32 on the CPU, by layer."""
    last: dict[int, torch.Tensor]
    """The mention's last token's hidden state, (n, hidden) float32 on the CPU, by layer."""

    def with_rows(self, rows: Sequence[int], other: MentionHiddens) -> MentionHiddens:
        """These hidden states with ``rows`` replaced by ``other``'s (one row each, in order)."""
        index = torch.tensor(rows, dtype=torch.long)

        def replaced(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            mine = mine.clone()
            mine[index] = theirs
            return mine

        return MentionHiddens(
            token_ranges=replaced(self.token_ranges, other.token_ranges),
            average={layer: replaced(t, other.average[layer]) for layer, t in self.average.items()},
            last={layer: replaced(t, other.last[layer]) for layer, t in self.last.items()},
        )


def span_hiddens(
    mt: models.ModelAndTokenizer,
    texts: Sequence[str],
    char_spans: Sequence[torch.Tensor],
    layers: Sequence[int],
    names: Sequence[str],
    batch_size: int = DEFAULT_PRECOMPUTE_BATCH_SIZE,
    desc: str = "hidden states",
) -> list[MentionHiddens]:
    """Hidden states at ``layers`` over character spans of ``texts``: one
    :class:`MentionHiddens` per tensor of ``char_spans`` (each (n, 2), a span per text).

    Texts run once, in batches of similar length, right-padded, and only as far as the deepest
    layer; the results come back in the order given.

    Raises:
        errors.SampleError: No token covers a span (names the sample).
    """
    device = models.determine_device(mt.model)
    order: list[int] = []
    ranges: list[list[torch.Tensor]] = [[] for _ in char_spans]
    average: list[dict[int, list[torch.Tensor]]] = [{k: [] for k in layers} for _ in char_spans]
    last: list[dict[int, list[torch.Tensor]]] = [{k: [] for k in layers} for _ in char_spans]
    # Characters stand in for tokens: sorting needs no extra pass of the tokenizer.
    batches = length_sorted_batches([len(text) for text in texts], batch_size)
    for indices in tqdm(batches, desc=desc, disable=len(batches) < 2):
        batch_names = [names[index] for index in indices]
        inputs, offsets = tokenize(mt.tokenizer, [texts[i] for i in indices], device, "right")
        mask = inputs.attention_mask.cpu()
        padded = [
            token_ranges_from_char_spans(spans[indices], offsets, mask, batch_names)
            for spans in char_spans
        ]
        order += indices
        for slot, slot_ranges in enumerate(padded):
            ranges[slot].append(unpad_token_ranges(slot_ranges, mask))
        for layer, states in hiddens_at_layers(mt, inputs, layers).items():
            states = states.float()
            rows = torch.arange(len(states), device=states.device)
            for slot, slot_ranges in enumerate(padded):
                average[slot][layer].append(average_in_ranges(states, slot_ranges).cpu())
                ends = slot_ranges[:, 1].to(states.device)
                last[slot][layer].append(states[rows, ends - 1].cpu())

    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))

    def in_given_order(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)[inverse]

    return [
        MentionHiddens(
            token_ranges=in_given_order(ranges[slot]),
            average={layer: in_given_order(parts) for layer, parts in average[slot].items()},
            last={layer: in_given_order(parts) for layer, parts in last[slot].items()},
        )
        for slot in range(len(char_spans))
    ]


def mention_hiddens(
    mt: models.ModelAndTokenizer,
    texts: Sequence[str],
    mentions: Sequence[str],
    layers: Sequence[int],
    names: Sequence[str],
    batch_size: int = DEFAULT_PRECOMPUTE_BATCH_SIZE,
    desc: str = "hidden states",
) -> MentionHiddens:
    """Hidden states at ``layers`` of the last mention of ``mentions[i]`` in ``texts[i]``
    (see :func:`span_hiddens`).

    Raises:
        errors.SampleError: A text does not mention its mention (names the sample).
    """
    spans = find_char_spans(texts, mentions, names)
    return span_hiddens(mt, texts, [spans], layers, names, batch_size, desc)[0]


def token_prefixes(
    tokenizer: Tokenizer, texts: Sequence[str], prefixes: Sequence[str]
) -> list[bool]:
    """Whether each text starts with its prefix, tokens included: the prefix's tokens on its own
    are the first tokens of the text (so a causal LM computes the same hidden states there)."""
    candidates = [
        i
        for i, (text, prefix) in enumerate(zip(texts, prefixes, strict=True))
        if prefix and text.startswith(prefix)
    ]
    result = [False] * len(texts)
    if candidates:
        text_ids = tokenizer([texts[i] for i in candidates])["input_ids"]
        prefix_ids = tokenizer([prefixes[i] for i in candidates])["input_ids"]
        for index, ids, own in zip(candidates, text_ids, prefix_ids, strict=True):
            result[index] = list(ids[: len(own)]) == list(own)
    return result


@dataclass
class EditorInputs:
    """Everything an editor needs for a set of samples, computed once and reused every epoch.

    Hidden states are float32 on the CPU (moved per batch), keyed by layer. Token ranges are
    unpadded ``[start, end)``: ``entity_token_ranges`` of the entity's last mention in the
    prompt, ``attribute_token_ranges`` of the attribute in the context.
    """

    ids: list[str]
    entities: list[str]
    prompts: list[str]
    contexts: list[str]
    entity_token_ranges: torch.Tensor
    prompt_lengths: torch.Tensor
    attribute_token_ranges: torch.Tensor
    entity_last_hiddens: dict[int, torch.Tensor] = field(default_factory=dict)
    entity_average_hiddens: dict[int, torch.Tensor] = field(default_factory=dict)
    attribute_hiddens: dict[int, torch.Tensor] = field(default_factory=dict)
    attribute_last_hiddens: dict[int, torch.Tensor] = field(default_factory=dict)
    target_mediated_ids: torch.Tensor | None = None
    target_unmediated_ids: torch.Tensor | None = None
    relation_prompts: list[list[str]] | None = None
    """Per sample, prompts about its entity under other relations (training's relation term,
    ``lam_rel``); None: not computed (see :meth:`with_relation_prompts`)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.attribute_hiddens))

    def entity_hiddens(self, layer: int, last_token: bool = True) -> torch.Tensor:
        """Entity representation at ``layer``: its last token's, or the mean over its tokens."""
        return (self.entity_last_hiddens if last_token else self.entity_average_hiddens)[layer]

    def attribute(self, layer: int, last_token: bool = False) -> torch.Tensor:
        """Attribute representation at ``layer``: the mean over its tokens (REMEDI), or its
        last token's hidden state."""
        return (self.attribute_last_hiddens if last_token else self.attribute_hiddens)[layer]

    def with_relation_prompts(self, prompts_by_id: Mapping[str, Sequence[str]]) -> EditorInputs:
        """These inputs with each sample's :attr:`relation_prompts` from ``prompts_by_id``
        (sample id -> prompts; a sample missing from it gets none)."""
        prompts = [list(prompts_by_id.get(sample_id, ())) for sample_id in self.ids]
        return replace(self, relation_prompts=prompts)

    def select(self, indices: Sequence[int] | torch.Tensor) -> EditorInputs:
        """The inputs of a subset of samples, in the order of ``indices``."""
        index = torch.as_tensor(indices, dtype=torch.long)
        rows = index.tolist()
        values: dict = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, list):
                values[item.name] = [value[row] for row in rows]
            elif isinstance(value, torch.Tensor):
                values[item.name] = value[index]
            elif isinstance(value, dict):
                values[item.name] = {layer: tensor[index] for layer, tensor in value.items()}
            else:
                values[item.name] = value
        return EditorInputs(**values)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[EditorInputs]:
        """Batches in order, or shuffled with ``generator``."""
        order = (
            torch.randperm(len(self), generator=generator)
            if generator is not None
            else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            yield self.select(order[start : start + batch_size])


def editor_inputs(
    mt: models.ModelAndTokenizer,
    samples: Samples,
    layers: Sequence[int],
    batch_size: int = DEFAULT_PRECOMPUTE_BATCH_SIZE,
    with_targets: bool = True,
    desc: str = "precompute editor inputs",
    with_entities: bool = True,
) -> EditorInputs:
    """Compute :class:`EditorInputs` for samples (a ``datasets.Dataset`` or list of dicts).

    One forward pass per batch of contexts (and one per batch of the entities that their
    contexts do not begin with) records every requested layer at once, and runs only up to the
    deepest of them. Without ``with_entities``, the entities' hidden states are left out (for
    editors that do not read them).

    Raises:
        ValueError: A prompt does not mention its entity (the error names the sample).
    """
    columns = _columns(samples, ("id", "entity", "prompt", "context", "attribute"))
    ids, entities, prompts = columns["id"], columns["entity"], columns["prompt"]
    contexts, attributes = columns["context"], columns["attribute"]
    layers = sorted(set(layers))
    models.determine_layer_paths(mt.model, layers)  # fail early on a bad layer

    entity_token_ranges, prompt_lengths = _token_ranges_and_lengths(
        mt.tokenizer, prompts, entities, ids
    )
    # The entity is encoded on its own, as in the reference: its representation does not
    # depend on the prompt, so one direction can be applied to any prompt that mentions it. A
    # context that begins with the entity (most CounterFact rewrites) has the entity's own
    # tokens first, hence the same hidden states: they are read there, and only the other
    # entities run on their own.
    attribute_spans = find_char_spans(contexts, attributes, ids)
    in_context = (
        token_prefixes(mt.tokenizer, contexts, entities) if with_entities else [False] * len(ids)
    )
    entity_spans = torch.tensor(
        [
            [0, len(entity)] if found else span  # the attribute: a placeholder, not read
            for entity, found, span in zip(
                entities, in_context, attribute_spans.tolist(), strict=True
            )
        ]
    )
    attribute, entity = span_hiddens(
        mt, contexts, [attribute_spans, entity_spans], layers, ids, batch_size, desc
    )
    alone = [index for index, found in enumerate(in_context) if not found]
    if with_entities and alone:
        own = [entities[index] for index in alone]
        names = [ids[index] for index in alone]
        alone_hiddens = mention_hiddens(mt, own, own, layers, names, batch_size, desc)
        entity = entity.with_rows(alone, alone_hiddens)

    target_mediated_ids = target_unmediated_ids = None
    if with_targets:
        targets = _columns(samples, ("target_mediated", "target_unmediated"), required=False)
        if targets.get("target_mediated") and all(targets["target_mediated"]):
            target_mediated_ids = target_token_ids(mt.tokenizer, targets["target_mediated"])
        if targets.get("target_unmediated") and all(targets["target_unmediated"]):
            target_unmediated_ids = target_token_ids(mt.tokenizer, targets["target_unmediated"])

    return EditorInputs(
        ids=list(ids),
        entities=list(entities),
        prompts=list(prompts),
        contexts=list(contexts),
        entity_token_ranges=entity_token_ranges,
        prompt_lengths=prompt_lengths,
        attribute_token_ranges=attribute.token_ranges,
        entity_last_hiddens=entity.last if with_entities else {},
        entity_average_hiddens=entity.average if with_entities else {},
        attribute_hiddens=attribute.average,
        attribute_last_hiddens=attribute.last,
        target_mediated_ids=target_mediated_ids,
        target_unmediated_ids=target_unmediated_ids,
    )


def _columns(samples: Samples, names: Sequence[str], required: bool = True) -> dict[str, list]:
    """Columns of a ``datasets.Dataset`` or a list of sample dicts."""
    if isinstance(samples, datasets.Dataset):
        present = [name for name in names if name in samples.column_names]
        result = {name: list(samples[name]) for name in present}
    else:
        rows: list[Mapping[str, Any]] = list(samples)
        present = [name for name in names if all(name in row for row in rows)]
        result = {name: [row[name] for row in rows] for name in present}
    missing = [name for name in names if name not in present]
    if required and missing:
        raise KeyError(f"samples lack the field(s) {', '.join(missing)}; see remedi.data")
    return result
