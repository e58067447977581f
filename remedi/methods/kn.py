"""Knowledge Neurons (Dai et al. 2022) as EasyEdit runs it (Gu et al. 2024's KN).

For a request (prompt, old answer, new answer), as EasyEdit's ``apply_kn_to_model``
(JasonForJoy/Model-Editing-Hurt ``easyeditor/models/kn/kn_main.py:23-51``, on its
``knowledge_neurons`` package, cited below as ``kn.py``: ``easyeditor/models/kn/knowledge_neurons/
knowledge_neurons/knowledge_neurons.py``):

1. **Attribution** (``kn.py:466-628``): at every layer, the intermediate activation ``a`` of the
   MLP at the prompt's last token is replaced by ``alpha a`` for ``steps`` values of ``alpha``
   evenly from 0 to 1, both included (``torch.linspace``, ``kn.py:197-213``), ``batch_size`` at a
   time; the gradient of the probability of the old answer's token there is summed over the
   steps, and neuron ``i``'s attribution is ``a_i / steps`` times that sum (``kn.py:610-620``): a
   Riemann sum of integrated gradients from the baseline 0 to ``a``, which by completeness adds
   up over the neurons of a layer to about ``p(a) - p(0)``. The activation is the output of the
   MLP's first projection (``c_fc``, ``fc_in``, ``gate_proj``: the reference's ``input_ff_attr``,
   ``kn.py:42-58``, patched by ``patch.py:187-199``), before the nonlinearity;
   ``site="post"`` attributes the output projection's input instead (the nonlinearity's output,
   Dai et al.'s activation and the reference's for BERT, whose ``intermediate`` includes it).
2. **Selection** (``kn.py:303-361``): the neurons of all layers whose attribution is above
   ``adaptive_threshold`` times the largest attribution (strictly; ``kn.py:349-352``).
   With ``refine`` the neurons found for several prompts are kept if more than ``p`` times the
   number of prompts select them (``kn.py:445-454``); the method, like ``kn_main.py:31``, gives
   the request's one prompt, where refining keeps every neuron.
3. **Edit** (``kn.py:768-873``): the output row of each selected neuron (GPT-2's ``c_proj`` row,
   a ``Linear``'s column) gets ``enhance_scale`` times the input embeddings of the new answer's
   tokens added and ``erase_scale`` times those of the model's greedy continuation of the prompt
   (as many tokens as the new answer has) subtracted: the reference subtracts twice the greedy
   token's embedding for a one-token answer (``kn.py:853``, ``:868``) and once each for several
   (``kn.py:849-851``, ``:864-866``; ``multi_token_erase_scale``), and adds each new token's once
   (its target ids are always a list, so ``kn.py:854-856`` and ``:869-871`` run). The greedy
   prediction, not the old answer, is what is subtracted (``kn.py:813``): they agree where the
   model knows the fact.

Multi-token answers: the attribution is that of each old-answer token's probability at the
prompt's last token, averaged over its tokens, which is what the reference computes for GPT-2 and
GPT-J (``kn.py:502-627``: its re-tokenisation at ``kn.py:507`` tests ``model_type == "gpt"``, never
true for ``"gpt2"``/``"gptj"``). For LLaMA the reference appends greedy tokens instead and counts
BOS as an answer token (``tokenizer.encode`` adds it, ``kn.py:127``); we do not.

Where we differ: answers are tokenized as they follow the prompt (``prompt + " " + answer``,
:func:`~remedi.methods.common.target_token_ids`: the token the model predicts, with its leading
space), not alone (``tokenizer.encode(answer)``, ``kn.py:127``, which for GPT-2 gives the token of
the word at the start of a text); a request without an old answer attributes the model's greedy
prediction; the greedy continuation appends token ids (the reference re-tokenizes the decoded text,
``kn.py:143-178``); the probabilities and the edit are computed in float32 (or the model's wider
dtype) and the edit cast once (the reference works in the model's dtype and adds one embedding at a
time). Functions here return new weights and never write into
the model.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import errors, hooks, models
from remedi.methods import common
from remedi.methods.base import MethodSetup, WeightEditor

logger = logging.getLogger(__name__)

SITES = ("pre", "post")
"""Where a neuron's activation is read (:attr:`KnHparams.site`)."""

Neuron = tuple[int, int]
"""``(layer, index)`` of an intermediate MLP neuron."""


@dataclass
class KnHparams(DataClassJsonMixin):
    """KN's hyperparameters (names as in EasyEdit's ``hparams/KN/*.yaml``; its ``lr_scale`` and
    ``n_toks`` are read by nothing in its KN and are left out)."""

    steps: int = 20
    """Points of the integrated gradient's Riemann sum, 0 to 1 inclusive."""
    batch_size: int = 20
    """Points per forward pass (the reference asserts that it divides ``steps``, ``kn.py:493``;
    here the last batch may be shorter)."""
    adaptive_threshold: float = 0.2
    """A neuron is kept above this share of the largest attribution over all layers."""
    refine: bool = False
    """Keep only neurons selected for more than ``p`` of the prompts (one prompt: all)."""
    p: float = 0.4
    layers: list[int] | None = None
    """Layers whose neurons are attributed and may be edited; None: all (the reference's,
    ``kn.py:283-301``)."""
    erase_scale: float = 2.0
    """Times the greedy prediction's embedding subtracted for a one-token answer."""
    multi_token_erase_scale: float = 1.0
    """Times each greedy token's embedding subtracted for an answer of several tokens."""
    enhance_scale: float = 1.0
    """Times each new answer token's embedding added."""
    site: str = "pre"
    """``"pre"``: the MLP first projection's output (the reference's for GPT-2, GPT-J, LLaMA);
    ``"post"``: the output projection's input (after the nonlinearity; Dai et al.'s)."""
    signed_edit: bool = False
    """Ours, off by default: each row gets ``delta`` times the sign of its neuron's activation
    (the output projection's input at the prompt's last token). The reference adds ``delta`` to
    every row, which moves the output towards the new answer only where that activation is
    positive: GELU's large activations are, a gated MLP's (``silu(gate) * up``) are of either
    sign, so on LLaMA-layout models part of the edit pushes the other way."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise errors.UsageError(
                f"KN needs steps >= 1 and batch_size >= 1, got {self.steps} and {self.batch_size}"
            )
        if self.site not in SITES:
            raise errors.UsageError(
                f"KN's site must be one of {', '.join(SITES)}, got {self.site!r}"
            )
        if not 0.0 <= self.p < 1.0:
            raise errors.UsageError(f"KN's p must be in [0, 1), got {self.p}")
        if not 0.0 <= self.adaptive_threshold < 1.0:
            # Neurons strictly above threshold x the largest score: 1 or more selects none.
            raise errors.UsageError(
                f"KN's adaptive_threshold must be in [0, 1), got {self.adaptive_threshold}: at 1 "
                "or more no neuron is above that share of the largest attribution"
            )
        if self.layers is not None and not self.layers:
            raise errors.UsageError("KN's layers is empty; give at least one layer or null (all)")


def attributed_layers(mt: models.ModelAndTokenizer, hparams: KnHparams) -> list[int]:
    """The layers KN attributes: ``hparams.layers``, else every layer.

    Raises:
        errors.UsageError: A layer is out of range.
    """
    layers = list(range(mt.num_layers)) if hparams.layers is None else list(hparams.layers)
    common.check_layers(mt, layers)
    return layers


def _site(mt: models.ModelAndTokenizer, layer: int, site: str) -> tuple[str, bool]:
    """The module whose output (``pre``) or input (``post``) holds ``layer``'s neurons, and
    whether it is its input."""
    if site == "pre":
        return models.determine_mlp_input(mt.model, layer), False
    return models.determine_mlp_output(mt.model, layer).module_path, True


def input_embeddings(mt: models.ModelAndTokenizer) -> torch.Tensor:
    """The model's input word embeddings (vocabulary, hidden), detached: what KN adds and
    subtracts (the reference's ``word_embeddings_attr``, ``kn.py:47-58``)."""
    module: torch.nn.Module = mt.model.get_input_embeddings()
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def _prompt_ids(mt: models.ModelAndTokenizer, prompt: str) -> torch.Tensor:
    return mt.tokenizer(prompt, return_tensors="pt").input_ids.to(mt.device)


def activations(
    mt: models.ModelAndTokenizer, prompt: str, layer: int, site: str = "pre"
) -> torch.Tensor:
    """The intermediate activation of ``layer``'s MLP at the prompt's last token (intermediate,)."""
    path, is_input = _site(mt, layer, site)
    with (
        torch.no_grad(),
        hooks.trace(
            mt.model, {"site": path}, retain_input=is_input, retain_output=not is_input, detach=True
        ) as traced,
    ):
        mt.model(input_ids=_prompt_ids(mt, prompt))
    recorded = traced["site"].input if is_input else traced["site"].output
    assert recorded is not None  # the module ran in the forward pass above
    return recorded[0, -1]


def integrated_gradients(
    mt: models.ModelAndTokenizer,
    prompt: str,
    answer_ids: Sequence[int],
    layer: int,
    steps: int = 20,
    batch_size: int = 20,
    site: str = "pre",
) -> torch.Tensor:
    """Each neuron's integrated-gradient attribution at ``layer`` (intermediate,), float32 or the
    model's wider dtype: ``a_i / steps`` times the sum over ``alpha`` in ``linspace(0, 1, steps)``
    of the gradient of ``p(answer | prompt)`` with respect to neuron ``i``, when the activation
    ``a`` at the prompt's last token is replaced by ``alpha a``; ``p`` is the probability of each
    answer token at the prompt's last token, averaged over the answer's tokens."""
    vocabulary = int(input_embeddings(mt).shape[0])
    if not answer_ids or not all(0 <= token < vocabulary for token in answer_ids):
        raise errors.UsageError(
            f"KN's attribution needs the answer as token ids of the model's vocabulary (0 to "
            f"{vocabulary - 1}), got {list(answer_ids)}; build them with "
            "remedi.methods.common.target_token_ids"
        )
    path, is_input = _site(mt, layer, site)
    input_ids = _prompt_ids(mt, prompt)
    actual = activations(mt, prompt, layer, site)
    alphas = torch.linspace(0, 1, steps, device=actual.device, dtype=actual.dtype)
    answer = torch.tensor(list(answer_ids), device=input_ids.device)
    gradient_sum = torch.zeros_like(actual, dtype=torch.promote_types(actual.dtype, torch.float32))
    for chunk in alphas.split(batch_size):
        scaled = (chunk[:, None] * actual[None]).requires_grad_(True)

        def replace(key: str, hidden: torch.Tensor, scaled: torch.Tensor = scaled) -> torch.Tensor:
            edited = hidden.clone()
            edited[:, -1] = scaled
            return edited

        with (
            torch.enable_grad(),
            hooks.trace(
                mt.model,
                {"site": path},
                edit_input=replace if is_input else None,
                edit_output=None if is_input else replace,
            ),
        ):
            logits = mt.model(input_ids=input_ids.expand(len(chunk), -1)).logits[:, -1]
            probs = torch.softmax(logits.to(gradient_sum.dtype), dim=-1)
            (gradient,) = torch.autograd.grad(probs[:, answer].mean(-1).sum(), scaled)
        gradient_sum += gradient.sum(0)
    return actual.to(gradient_sum.dtype) * gradient_sum / steps


def attribution_scores(
    mt: models.ModelAndTokenizer, prompt: str, answer_ids: Sequence[int], hparams: KnHparams
) -> torch.Tensor:
    """:func:`integrated_gradients` at each of :func:`attributed_layers`, stacked
    (layers, intermediate)."""
    return torch.stack(
        [
            integrated_gradients(
                mt, prompt, answer_ids, layer, hparams.steps, hparams.batch_size, hparams.site
            )
            for layer in attributed_layers(mt, hparams)
        ]
    )


def coarse_neurons(
    scores: torch.Tensor, layers: Sequence[int], adaptive_threshold: float
) -> list[Neuron]:
    """The neurons whose attribution is above ``adaptive_threshold`` times the largest of
    ``scores`` (layers, intermediate), as ``(layer, index)`` in layer order then index; none
    when the largest is at or below zero."""
    threshold = scores.max() * adaptive_threshold
    return [(layers[row], column) for row, column in torch.nonzero(scores > threshold).tolist()]


def refined_neurons(per_prompt: Sequence[Sequence[Neuron]], p: float, refine: bool) -> list[Neuron]:
    """The neurons of ``per_prompt`` (each prompt's coarse neurons) in first-seen order: all of
    them, or with ``refine`` those selected for more than ``p`` times the number of prompts."""
    counts: collections.Counter[Neuron] = collections.Counter()
    for neurons in per_prompt:
        counts.update(dict.fromkeys(neurons, 1))
    needed = len(per_prompt) * p
    return [neuron for neuron, count in counts.items() if not refine or count > needed]


def select_neurons(
    mt: models.ModelAndTokenizer,
    prompts: Sequence[str],
    answer_ids: Sequence[int],
    hparams: KnHparams,
) -> list[Neuron]:
    """KN's neurons for ``answer_ids`` after ``prompts``: each prompt's coarse neurons, refined."""
    layers = attributed_layers(mt, hparams)
    per_prompt = [
        coarse_neurons(
            attribution_scores(mt, prompt, answer_ids, hparams), layers, hparams.adaptive_threshold
        )
        for prompt in prompts
    ]
    return refined_neurons(per_prompt, hparams.p, hparams.refine)


def greedy_tokens(mt: models.ModelAndTokenizer, prompt: str, count: int) -> list[int]:
    """The model's ``count`` most likely next tokens after ``prompt``, one at a time."""
    input_ids = _prompt_ids(mt, prompt)
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(count):
            token = int(mt.model(input_ids=input_ids).logits[0, -1].argmax())
            tokens.append(token)
            input_ids = torch.cat([input_ids, input_ids.new_tensor([[token]])], dim=1)
    return tokens


@dataclass
class NeuronUpdate:
    """A KN edit: ``delta`` (hidden,) added to the output row of each neuron in ``neurons``."""

    neurons: list[Neuron]
    delta: torch.Tensor
    weight_names: dict[int, str]
    """The output projection's weight of each edited layer."""
    transposed: dict[int, bool]
    """Whether that weight is (in, out) (GPT-2's ``Conv1D``)."""
    signs: list[float] | None = None
    """Per neuron, the factor of ``delta`` in its row (``signed_edit``: the sign of its
    activation); None: 1 for every neuron (the reference)."""

    def new_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The edited output projections, each in its weight's dtype and device."""
        signs = self.signs if self.signs is not None else [1.0] * len(self.neurons)
        by_layer: dict[int, list[tuple[int, float]]] = collections.defaultdict(list)
        for (layer, index), sign in zip(self.neurons, signs, strict=True):
            by_layer[layer].append((index, sign))
        new = {}
        for layer, entries in by_layer.items():
            name = self.weight_names[layer]
            weight = model.get_parameter(name)
            edited = weight.detach().to(torch.promote_types(weight.dtype, torch.float32)).clone()
            rows = edited if self.transposed[layer] else edited.T
            delta = self.delta.to(edited.device, edited.dtype)
            indices = [index for index, _ in entries]
            factors = torch.tensor([sign for _, sign in entries], dtype=edited.dtype)
            rows[indices] += factors.to(edited.device)[:, None] * delta
            new[name] = common.cast_edited_weight(name, weight, edited, "KN")
        return new

    def nbytes(self) -> int:
        return self.delta.numel() * self.delta.element_size() + 24 * len(self.neurons)


def compute_update(
    mt: models.ModelAndTokenizer, request: common.EditRequest, hparams: KnHparams
) -> NeuronUpdate:
    """KN's edit of ``request``: the neurons of its old answer, moved to its new answer.

    Raises:
        errors.UsageError: A layer is out of range, or the model has no known MLP site.
        errors.SampleError: An answer that cannot be split from the prompt into tokens.
    """
    layers = attributed_layers(mt, hparams)
    new_ids = common.target_token_ids(mt.tokenizer, request.prompt, request.target_new)
    if request.target_true.strip():
        old_ids = common.target_token_ids(mt.tokenizer, request.prompt, request.target_true)
    else:
        old_ids = greedy_tokens(mt, request.prompt, 1)
        logger.info("KN: no old answer given; attributing the greedy prediction %s", old_ids)
    neurons = select_neurons(mt, [request.prompt], old_ids, hparams)
    if not neurons:  # the largest attribution is at or below zero, or refinement kept none
        logger.warning(
            "KN found no neuron that raises the answer's probability after %r: the edit changes "
            "nothing",
            request.prompt,
        )
    predicted = greedy_tokens(mt, request.prompt, len(new_ids))
    erase = hparams.erase_scale if len(new_ids) == 1 else hparams.multi_token_erase_scale
    embeddings = input_embeddings(mt)
    wide = torch.promote_types(embeddings.dtype, torch.float32)
    delta = -erase * embeddings[predicted].to(wide).sum(0)
    delta = delta + hparams.enhance_scale * embeddings[new_ids].to(wide).sum(0)
    projections = {layer: models.determine_mlp_output(mt.model, layer) for layer in layers}
    logger.info(
        "KN: %d neurons in layers %s; |delta| %.3f",
        len(neurons),
        sorted({layer for layer, _ in neurons}),
        float(delta.norm()),
    )
    signs = None
    if hparams.signed_edit:
        post = {
            layer: activations(mt, request.prompt, layer, "post")
            for layer in sorted({layer for layer, _ in neurons})
        }
        signs = [1.0 if float(post[layer][index]) >= 0 else -1.0 for layer, index in neurons]
    return NeuronUpdate(
        neurons,
        delta,
        {layer: projection.weight_name for layer, projection in projections.items()},
        {layer: projection.transposed for layer, projection in projections.items()},
        signs,
    )


class KnEditor(WeightEditor):
    """Knowledge Neurons prepared for one model: its hyperparameters (nothing to precompute)."""

    name = "kn"
    label = "KN"

    def __init__(self, hparams: KnHparams):
        self.hparams = hparams

    def compute(
        self, mt: models.ModelAndTokenizer, requests: Sequence[common.EditRequest]
    ) -> NeuronUpdate:
        self.check_requests(requests)
        return compute_update(mt, requests[0], self.hparams)


def prepare(mt: models.ModelAndTokenizer, hparams: KnHparams, setup: MethodSetup) -> KnEditor:
    """KN for ``mt`` (registered as ``kn``).

    Raises:
        errors.UsageError: A layer is out of range, or the model has no known MLP site.
    """
    for layer in attributed_layers(mt, hparams):
        _site(mt, layer, hparams.site)
    return KnEditor(hparams)
