"""One-call public API: load a model and a trained editor, then edit, generate and probe.

For a one-off edit without writing a dataset::

    import remedi

    bench = remedi.load(editor="editors_counterfact_toy")  # a run under results/, or a path
    prompt = "Alice Smith is employed as a"
    print(bench.edit("Alice Smith", "works as a pilot", prompt=prompt, targets=["pilot"]))
    print(bench.generate("Alice Smith", "works as a pilot", prompt=prompt, seed=0))
    print(bench.probe("Alice Smith", ["works as a pilot", "works as a doctor"]))

An *attribute* is what to make true of the entity ("works as a pilot"); the context the editor
reads is then ``"{entity} {attribute}"``, and the attribute is the text after the entity's last
mention in it, as :mod:`remedi.data` builds CounterFact samples. A whole context sentence that
mentions the entity ("Alice Smith is a pilot.") is accepted too. The edit is added at the
entity's (last) mention in the prompt, so every prompt must mention the entity.

The probe is REMEDI's attribute classification (the reference's ``Editor.classify``, used by its
fact classification benchmark): the editor's direction for each attribute (computed from the
attribute's context and, for editors that read it, the entity's state) is compared with the
entity's hidden state at the editor's layer (the entity on its own, or its last mention in a
given text); the higher the similarity, the more the LM already encodes the attribute in its
representation of the entity. Differences from the reference, and why:

- The reference standardises entity states and directions per dimension over a whole dataset,
  then takes the dot product (its default; cosine is its option). One entity has no such
  population, and the raw dot product favours attributes whose directions are long, so the
  attributes are ranked by cosine by default; the dot product is reported next to it
  (``similarity="dot"`` ranks by it). On the small toy world (12 values per relation, chance
  mean reciprocal rank 0.26), ranking held-out entities' true values by cosine gave 0.44-0.58
  (mean 0.52) over six editors, by dot product 0.34-0.55 (mean 0.47).
- The entity's state is read where the editor would read or edit it: at its last token, or
  averaged over its tokens for editors trained with all entity tokens (the reference always
  read the last token; toy-world editors edit all entity tokens, and their last token alone
  scored near chance there: 0.26-0.33 over three editors).

This module is the top of the package: nothing in ``remedi`` imports it except ``__init__``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import data, editors, env, errors, hooks, models, precompute, settings, training

logger = logging.getLogger(__name__)

DEFAULT_PROMPT_TEMPLATE = "{} is"
"""The prompt when none is given: ROME's and REMEDI's relation-neutral essence prompt."""
DEFAULT_TOP_K = 10
DEFAULT_MAX_NEW_TOKENS = 20
DEFAULT_SAMPLING_TOP_K = 5
"""Sampling keeps the 5 likeliest tokens at each step, as ROME's generation benchmarks."""

EntityToken = Literal["last", "average"]
Similarity = Literal["cosine", "dot"]


# ---------------------------------------------------------------------------------------
# Results.


@dataclass
class TokenProbability(DataClassJsonMixin):
    """A next token (decoded, with its leading space if any) and its probability."""

    token: str
    probability: float


@dataclass
class TargetProbability(DataClassJsonMixin):
    """p(target | prompt) of a whole target string, before and after the edit.

    The target follows the prompt after a space; its probability is the product of its tokens'
    probabilities under teacher forcing (for a one-token target, the next-token probability).
    """

    target: str
    before: float
    after: float


@dataclass
class EditResult(DataClassJsonMixin):
    """What one edit did to the LM's next-token distribution after a prompt."""

    entity: str
    attribute: str
    """The attribute the editor read: the context after the entity's last mention."""
    context: str
    prompt: str
    layer: int
    alpha: float
    top_before: list[TokenProbability] = field(default_factory=list)
    top_after: list[TokenProbability] = field(default_factory=list)
    targets: list[TargetProbability] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"edit {self.entity!r}: {self.attribute!r} (layer {self.layer})"]
        lines.append(f"prompt {self.prompt!r}")
        if self.targets:
            width = max(len(target.target) for target in self.targets)
            lines.append(f"  {'target':<{width}}   before    after")
            lines += [
                f"  {target.target:<{width}}   {target.before:.4f}   {target.after:.4f}"
                for target in self.targets
            ]
        for name, top in (("before", self.top_before), ("after", self.top_after)):
            shown = ", ".join(f"{item.token!r} {item.probability:.3f}" for item in top[:5])
            lines.append(f"  top {name + ':':<8}{shown}")
        return "\n".join(lines)


@dataclass
class AttributeScore(DataClassJsonMixin):
    """How strongly the entity's representation points along an attribute's direction."""

    attribute: str
    cosine: float
    """Cosine of the entity's hidden state and the editor's direction for the attribute."""
    dot: float
    """Their dot product."""


@dataclass
class ProbeResult(DataClassJsonMixin):
    """Attributes ranked by how strongly the LM already assigns them to the entity."""

    entity: str
    text: str
    """The text the entity's hidden state was read from (its last mention)."""
    layer: int
    """The editor's layer (where the directions live)."""
    entity_layer: int
    entity_token: str
    """"last" (the entity's last token) or "average" (the mean over its tokens)."""
    similarity: str
    """What ranks the attributes: "cosine" or "dot"."""
    scores: list[AttributeScore] = field(default_factory=list)
    """Best first."""

    @property
    def best(self) -> str:
        """The attribute ranked first."""
        return self.scores[0].attribute

    def __str__(self) -> str:
        where = "on its own" if self.text == self.entity else f"in {self.text!r}"
        lines = [f"probe {self.entity!r} {where} (layer {self.entity_layer}, by {self.similarity})"]
        width = max((len(item.attribute) for item in self.scores), default=0)
        lines += [
            f"  {item.attribute:<{width}}   cosine {item.cosine:6.3f}   dot {item.dot:9.3f}"
            for item in self.scores
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Building samples from what a user types.


def context_sample(entity: str, attribute: str, prompt: str) -> data.ContextMediationSample:
    """The context mediation sample for one edit, built as :mod:`remedi.data` builds them.

    ``attribute`` is either what to make true of the entity ("works as a pilot"; the context
    becomes ``"{entity} works as a pilot"``) or a context sentence that mentions the entity.

    Raises:
        ValueError: The entity or attribute is empty, the attribute says nothing after the
            entity, or the prompt does not mention the entity.
    """
    if not entity.strip():
        raise errors.UsageError(
            "the entity is empty; pass the name the prompt uses, e.g. 'Alice Smith'"
        )
    if not attribute.strip():
        raise errors.UsageError(
            f"the attribute for {entity!r} is empty; pass what to make true of it, e.g. "
            "'works as a pilot', or a context sentence that mentions it"
        )
    check_mentions(entity, prompt)
    context = attribute if entity in attribute else f"{entity} {attribute.strip()}"
    attribute_text = data.attribute_from_context(context, entity)
    if not attribute_text:
        raise errors.UsageError(
            f"the context {context!r} says nothing about {entity!r} after its last mention; "
            "pass what to make true of the entity, e.g. 'works as a pilot'"
        )
    return data.ContextMediationSample(
        id="api/0",
        source="api",
        entity=entity,
        prompt=prompt,
        context=context,
        attribute=attribute_text,
        target_mediated=None,
        target_unmediated=None,
    )


def check_mentions(entity: str, text: str, what: str = "prompt") -> None:
    """Raise a ValueError that says what to do if ``text`` does not mention ``entity``."""
    if entity not in text:
        raise errors.SampleError(
            f"the {what} {text!r} does not mention the entity {entity!r}. REMEDI adds its edit "
            f"at the entity's mention, so the {what} must contain {entity!r} exactly (same "
            f"spelling and case), e.g. {DEFAULT_PROMPT_TEMPLATE.format(entity)!r}"
        )


# ---------------------------------------------------------------------------------------
# The workbench.


class Workbench:
    """A model and a trained editor, ready for one-off edits, generations and probes.

    Build it with :func:`load`, or directly from a loaded model and editor.
    """

    def __init__(
        self, mt: models.ModelAndTokenizer, editor: editors.Editor, source: Path | None = None
    ) -> None:
        self.mt = mt
        self.editor = editor.to(models.determine_device(mt.model)).eval()
        self.source = source
        """Where the editor was loaded from, if it was."""

    @property
    def layer(self) -> int:
        """The layer the editor edits."""
        return self.editor.layer

    def __repr__(self) -> str:
        return (
            f"Workbench(model={self.mt.name!r}, editor={self.editor.config.editor_type!r}, "
            f"layer={self.layer}, source={str(self.source) if self.source else None!r})"
        )

    @torch.no_grad()
    def direction(self, entity: str, attribute: str) -> torch.Tensor:
        """The editor's direction (hidden,) for making ``attribute`` true of ``entity``."""
        sample = context_sample(entity, attribute, entity)
        return editors.editor_directions(self.mt, self.editor, [sample])[0]

    @torch.no_grad()
    def edit(
        self,
        entity: str,
        attribute: str,
        prompt: str | None = None,
        targets: str | Sequence[str] = (),
        top_k: int = DEFAULT_TOP_K,
        alpha: float = editors.DEFAULT_ALPHA,
    ) -> EditResult:
        """Edit ``entity`` to have ``attribute`` and compare the next token after ``prompt``.

        Args:
            entity: The entity, as the prompt spells it ("Alice Smith").
            attribute: What to make true of it ("works as a pilot"), or a context sentence
                that mentions it.
            prompt: Text that mentions the entity (default ``"{entity} is"``).
            targets: A string or strings whose probability after the prompt to report, before
                and after the edit.
            top_k: How many of the likeliest next tokens to report.
            alpha: Scale of the direction (1: as trained).
        """
        prompt = DEFAULT_PROMPT_TEMPLATE.format(entity) if prompt is None else prompt
        sample = context_sample(entity, attribute, prompt)
        targets = [targets] if isinstance(targets, str) else list(targets)
        for target in targets:
            if not target.strip():
                raise errors.UsageError(f"targets must be non-empty strings, got {list(targets)!r}")
        direction = editors.editor_directions(self.mt, self.editor, [sample])

        # Row 0 is the prompt alone (the next-token distribution); each further row is the
        # prompt followed by one target, scored under teacher forcing.
        texts = [prompt, *(f"{prompt} {target}" for target in targets)]
        device = models.determine_device(self.mt.model)
        inputs, offsets = precompute.tokenize(self.mt.tokenizer, texts, device, "right")
        edit_ranges = editors.edit_token_ranges(
            self.mt.tokenizer,
            [prompt] * len(texts),
            [entity] * len(texts),
            offsets,
            inputs.attention_mask,
            self.editor.config.edit_last_entity_token,
        )
        logits_before = self.mt.model(**inputs).logits
        with hooks.add_directions(
            self.mt.model,
            self.layer,
            direction.expand(len(texts), -1).to(models.determine_dtype(self.mt.model)),
            edit_ranges.to(device),
            alpha,
        ):
            logits_after = self.mt.model(**inputs).logits

        prompt_last = int(inputs.attention_mask[0].sum()) - 1
        tops = [
            self._top_tokens(logits[0, prompt_last], top_k)
            for logits in (logits_before, logits_after)
        ]
        scored = [
            TargetProbability(target, before, after)
            for target, before, after in zip(
                targets,
                self._target_probabilities(logits_before, inputs, offsets, len(prompt)),
                self._target_probabilities(logits_after, inputs, offsets, len(prompt)),
                strict=True,
            )
        ]
        return EditResult(
            entity=entity,
            attribute=sample["attribute"],
            context=sample["context"],
            prompt=prompt,
            layer=self.layer,
            alpha=alpha,
            top_before=tops[0],
            top_after=tops[1],
            targets=scored,
        )

    def _top_tokens(self, logits: torch.Tensor, top_k: int) -> list[TokenProbability]:
        probabilities = torch.softmax(logits.float(), dim=-1)
        values, ids = probabilities.topk(min(top_k, probabilities.shape[-1]))
        return [
            TokenProbability(str(self.mt.tokenizer.decode([token_id])), float(value))
            for value, token_id in zip(values.tolist(), ids.tolist(), strict=True)
        ]

    @staticmethod
    def _target_probabilities(
        logits: torch.Tensor, inputs: Any, offsets: torch.Tensor, prompt_chars: int
    ) -> list[float]:
        """p(" target" | prompt) of rows 1.. (the prompt followed by a target)."""
        if logits.shape[0] == 1:
            return []
        input_ids = inputs.input_ids[1:]
        # A target token starts at or after the end of the prompt (the space included).
        is_target = (
            (offsets[1:, :, 0] >= prompt_chars)
            & (offsets[1:, :, 1] > offsets[1:, :, 0])
            & inputs.attention_mask[1:].cpu().bool()
        ).to(logits.device)
        log_probs = torch.log_softmax(logits[1:, :-1].float(), dim=-1)
        token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        total = (token_log_probs * is_target[:, 1:]).sum(dim=-1)
        return [float(value) for value in total.exp().tolist()]

    @torch.no_grad()
    def generate(
        self,
        entity: str,
        attribute: str,
        prompt: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        greedy: bool = False,
        seed: int = 0,
        top_k: int = DEFAULT_SAMPLING_TOP_K,
        alpha: float = editors.DEFAULT_ALPHA,
        edited: bool = True,
    ) -> str:
        """The prompt and its continuation, generated with ``entity`` edited to ``attribute``.

        Sampling (top-k, ``top_k`` tokens) is seeded with ``seed`` without touching the global
        random state; ``greedy`` decodes the likeliest token at each step. ``edited=False``
        generates from the same prompt without the edit, for comparison.
        """
        prompt = DEFAULT_PROMPT_TEMPLATE.format(entity) if prompt is None else prompt
        sample = context_sample(entity, attribute, prompt)
        direction = editors.editor_directions(self.mt, self.editor, [sample])
        if not edited:
            direction = torch.zeros_like(direction)
        device = models.determine_device(self.mt.model)
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            editors.apply_editor(
                self.mt, self.editor, direction, [prompt], [entity], alpha, padding_side="left"
            ) as inputs,
        ):
            torch.manual_seed(seed)
            generate: Any = self.mt.model.generate
            outputs = generate(
                **inputs,
                do_sample=not greedy,
                top_k=None if greedy else top_k,
                top_p=1.0,
                temperature=1.0,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.mt.tokenizer.pad_token_id,
            )
        continuation = outputs[0, inputs.input_ids.shape[1] :]
        return prompt + str(self.mt.tokenizer.decode(continuation, skip_special_tokens=True))

    @torch.no_grad()
    def probe(
        self,
        entity: str,
        attributes: Sequence[str],
        prompt: str | None = None,
        similarity: Similarity = "cosine",
        entity_layer: int | None = None,
        entity_token: EntityToken | None = None,
    ) -> ProbeResult:
        """Rank ``attributes`` by how strongly the LM already assigns each to ``entity``.

        Each attribute is scored by the similarity of the editor's direction for it with the
        entity's hidden state (REMEDI's classification; see the module docstring).

        Args:
            entity: The entity.
            attributes: Candidate attributes ("works as a pilot", ...) or context sentences.
            prompt: Text whose last mention of the entity is read (default: the entity on its
                own). Put a context first ("Alice Smith is a pilot. Alice Smith") to ask what
                the LM reads from it.
            similarity: "cosine" (default) or "dot" ranks the attributes; both are reported.
            entity_layer: Layer of the entity's hidden state (default: the editor's layer).
            entity_token: "last" token or "average" over its tokens (default: what the
                editor reads).
        """
        if not attributes:
            raise errors.UsageError("pass at least one attribute to score")
        if similarity not in ("cosine", "dot"):
            raise errors.UsageError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        text = entity if prompt is None else prompt
        check_mentions(entity, text)
        entity_layer = self.layer if entity_layer is None else entity_layer
        check_layer(self.mt, entity_layer)
        if entity_token is None:
            entity_token = "last" if self.editor.config.input_last_entity_token else "average"
        if entity_token not in ("last", "average"):
            raise errors.UsageError(
                f"entity_token must be 'last' or 'average', got {entity_token!r}"
            )

        device = models.determine_device(self.mt.model)
        samples = [context_sample(entity, attribute, entity) for attribute in attributes]
        inputs = precompute.editor_inputs(
            self.mt, samples, [self.layer], with_targets=False, desc="probe attributes"
        )
        attribute_states = inputs.attribute(
            self.layer, self.editor.config.input_last_attribute_token
        ).to(device)

        states = self._entity_states(entity, text, sorted({self.layer, entity_layer}))
        entity_input = None
        if self.editor.uses_entity:
            last = self.editor.config.input_last_entity_token
            entity_input = states[self.layer]["last" if last else "average"]
            entity_input = entity_input.expand(len(samples), -1)
        directions = self.editor(attribute=attribute_states, entity=entity_input).float()

        entity_state = states[entity_layer][entity_token]
        dots = directions @ entity_state
        cosines = torch.nn.functional.cosine_similarity(directions, entity_state[None], dim=-1)
        scores = [
            AttributeScore(attribute, float(cosine), float(dot))
            for attribute, cosine, dot in zip(
                attributes, cosines.tolist(), dots.tolist(), strict=True
            )
        ]
        scores.sort(key=lambda item: -(item.cosine if similarity == "cosine" else item.dot))
        return ProbeResult(
            entity=entity,
            text=text,
            layer=self.layer,
            entity_layer=entity_layer,
            entity_token=entity_token,
            similarity=similarity,
            scores=scores,
        )

    def _entity_states(
        self, entity: str, text: str, layers: Sequence[int]
    ) -> dict[int, dict[str, torch.Tensor]]:
        """The entity's last-token and mean hidden states (float32) at its last mention."""
        device = models.determine_device(self.mt.model)
        inputs, offsets = precompute.tokenize(self.mt.tokenizer, [text], device)
        spans = precompute.find_char_spans([text], [entity])
        token_range = precompute.token_ranges_from_char_spans(
            spans, offsets, inputs.attention_mask.cpu()
        ).to(device)
        states: dict[int, dict[str, torch.Tensor]] = {}
        for layer, hiddens in precompute.hiddens_at_layers(self.mt, inputs, layers).items():
            hiddens = hiddens.float()
            states[layer] = {
                "last": hiddens[0, token_range[0, 1] - 1],
                "average": precompute.average_in_ranges(hiddens, token_range)[0],
            }
        return states


# ---------------------------------------------------------------------------------------
# Loading.


def find_editor(editor: str | Path, layer: int | None = None, editor_type: str = "linear") -> Path:
    """Resolve ``editor`` to the directory of one finished editor.

    ``editor`` is a training run directory (``scripts.train_editors`` writes ``args.json`` and
    ``<editor_type>/<layer>/``), an editor directory (``config.json`` and
    ``weights.safetensors``), or the name of a run under ``remedi.env.results_dir()``. In a
    run, ``layer`` picks the editor (default: the only layer the run trained).

    Raises:
        FileNotFoundError: Nothing there, or the run has no finished editor for ``layer``.
        ValueError: The editor directory is for another layer, or the run has several.
    """
    if layer is not None and layer < 0:
        raise errors.UsageError(f"layer {layer} is negative; layers count from 0")
    path = Path(editor).expanduser()
    if not path.exists() and not path.is_absolute() and (env.results_dir() / path).exists():
        path = env.results_dir() / path
    if not path.is_dir():
        raise errors.MissingFileError(
            f"no editor at {editor!s} (nor at {env.results_dir() / str(editor)}): pass a "
            "training run directory (results/NAME, written by scripts.train_editors or "
            "`invoke x.train.counterfact`), a run name under REMEDI_RESULTS_DIR, or an editor "
            "directory holding config.json and weights.safetensors"
        )
    if (path / editors.CONFIG_FILE).is_file():
        config = editors.read_editor_config(path)
        if layer is not None and layer != config.layer:
            raise errors.UsageError(
                f"the editor in {path} edits layer {config.layer}, not layer {layer}; pass "
                f"layer=None (or {config.layer}), or an editor trained for layer {layer}"
            )
        return path
    finished = training.list_run_editors(path)
    if not finished and not (path / training.ARGS_FILE).is_file():
        raise errors.MissingFileError(
            f"{path} holds neither a training run (args.json and <editor_type>/<layer>/ "
            "folders) nor an editor (config.json and weights.safetensors); pass the folder "
            "scripts.train_editors wrote (results/NAME) or one of its <editor_type>/<layer>/"
        )
    layers = finished.get(editor_type, [])
    if layer is None and len(layers) > 1:
        raise errors.UsageError(
            f"the run in {path} has {editor_type} editors for layers {layers}; pick one with layer="
        )
    if layer is None and layers:
        layer = layers[0]
    if layer not in layers:
        wanted = f"layer {layer}" if layer is not None else "any layer"
        raise errors.MissingFileError(
            f"no finished {editor_type} editor for {wanted} in {path} (finished: "
            f"{finished or 'none'}); pass one of those, or train it with scripts.train_editors "
            f"-l LAYER -t {editor_type}"
        )
    return training.editor_dir(path, editor_type, layer)


def load(
    editor: str | Path,
    model: str | models.ModelAndTokenizer | None = None,
    layer: int | None = None,
    editor_type: str = "linear",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    check_model: bool = True,
) -> Workbench:
    """Load a model and a trained editor into a :class:`Workbench`.

    Args:
        editor: A training run directory, a run name under ``results/``, or an editor
            directory (see :func:`find_editor`).
        model: A model name, alias or directory for :func:`remedi.models.load_model`, or a
            loaded model. Default: the model the editor was trained for.
        layer: The editor's layer, when the run trained several.
        editor_type: Which of the run's editor types (default ``linear``, REMEDI's).
        device: Where to load the model (default CPU); ignored for a loaded model.
        dtype: The model's dtype (default: REMEDI's reference precision, see
            :data:`remedi.settings.PRECISION`).
        check_model: Refuse an editor trained for a model of another name (set False for a
            renamed copy of the same model; a different hidden size is always refused).

    Raises:
        FileNotFoundError: No editor where ``editor`` points, or none for ``layer``; checked
            before the model loads.
        ValueError: ``layer`` is out of the model's range, or the editor belongs to another
            model or hidden size.
        remedi.models.ModelLoadError: The model cannot be found locally or downloaded.
    """
    if isinstance(model, models.ModelAndTokenizer) and layer is not None:
        check_layer(model, layer)
    directory = find_editor(editor, layer, editor_type)
    if model is None:
        model = editors.read_editor_config(directory).model_name
    mt = model if isinstance(model, models.ModelAndTokenizer) else None
    if mt is None:
        assert isinstance(model, str)
        mt = models.load_model(model, device=device, dtype=dtype, experiment=settings.REMEDI)
    loaded = editors.load_editor(directory, mt, check_model=check_model)
    logger.info("loaded %s editor for layer %d from %s", editor_type, loaded.layer, directory)
    return Workbench(mt, loaded, source=directory)


def check_layer(mt: models.ModelAndTokenizer, layer: int) -> None:
    """Raise a ValueError that says what to do if ``layer`` is not a layer of ``mt``."""
    if not 0 <= layer < mt.num_layers:
        raise errors.UsageError(
            f"layer {layer} is out of range for {mt.name!r}, which has {mt.num_layers} layers "
            f"(0..{mt.num_layers - 1}); pass a layer the editor was trained for"
        )
