"""The paper's settings as data: for each model and dataset, the layer REMEDI edits at and the
layer the probes read the entity at; how editors train on the toy world; and, for each
experiment, the precision its reference loaded the LM in (:data:`PRECISION`).

One table, :data:`PAPER_SETTINGS`, read by the invoke tasks (``tasks.py``), which hold no numbers
of their own. A model is looked up by its alias (``gptj``) or by the Hugging Face name the alias
stands for (``EleutherAI/gpt-j-6B``): :func:`settings_name` resolves the name once, so that each
model is listed once. A model or dataset without an entry has no default: the tasks then ask for
the layer (``--layer N``).

The GPT-J, GPT-2 XL and GPT-2 values are the REMEDI reference's (Hernandez et al. 2023,
github.com/evandez/REMEDI, ``experiments/aliases.py`` at commit 4109865: ``REMEDI_EDITOR_LAYER``
at lines 26-40, with McRae on GPT-J at layer 12 on line 30, the layer its
``experiments/eval/ent.py`` (commit 4bfadf9, line 12) evaluates entailment at;
``REMEDI_ENTITY_CLS_LAYER`` at lines 43-56). The toy worlds' values were measured here; the comments say how.

This module imports no model code, so that ``invoke --list`` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

COUNTERFACT = "counterfact"
BIOSBIAS = "biosbias"
MCRAE = "mcrae"


@dataclass(frozen=True)
class DatasetSettings:
    """Where REMEDI works on one dataset for one model."""

    editor_layer: int
    """The layer the editor edits the entity's hidden state at (``-l`` of training)."""
    entity_layer: int | None = None
    """The layer classification reads the entity at (``--entity-layers``); None: not chosen."""


# The table's rows: model, dataset, editor layer, entity layer (None: none chosen).
_LAYERS: tuple[tuple[str, str, int, int | None], ...] = (
    ("gptj", COUNTERFACT, 1, 26),
    ("gptj", BIOSBIAS, 12, 15),
    ("gptj", MCRAE, 12, None),  # the reference's experiments/aliases.py line 30 (see above)
    # GPT-2 XL and GPT-2 have no McRae layer in the reference: they train at their CounterFact
    # layer (what x.train.mcrae has always used for them).
    ("gpt2-xl", COUNTERFACT, 0, 34),
    ("gpt2-xl", BIOSBIAS, 4, 37),
    ("gpt2-xl", MCRAE, 0, None),
    ("gpt2", COUNTERFACT, 0, 10),
    ("gpt2", BIOSBIAS, 10, 11),
    ("gpt2", MCRAE, 0, None),
    # The toy world's 4-layer LM.
    # - CounterFact: editor layer 0, chosen for the toy. Entity layer 1: picked by the reference's
    #   criterion (best Fact-Med F1, x.sweep.cls.counterfact's) on 500 held-out samples (an
    #   editor trained at layer 0 with 40% held out): Fact-Med F1 0.196/0.217/0.186/0.196 at
    #   layers 0-3, MCC -0.06/-0.01/-0.08/-0.06, i.e. no layer carries signal there (on
    #   x.train.counterfact's 125 held-out samples the same sweep had picked layer 3, F1 0.32,
    #   MCC 0.14: noise of a small split).
    # - Bias in Bios: editor layer 1, measured best (decontextual top-1 accuracy on 104 held-out
    #   samples of editors trained at layers 0/1/2/3: 56.7/71.2/57.7/32.7%, the unedited LM
    #   32.7%). Entity layer 0, measured by x.sweep.cls.biosbias (editor layer 1, 104 held-out
    #   samples, entity layers 0-3: Bios-Med F1 0.103/0.097/0.095/0.094); the toy LM errs on only
    #   4% of them, so these F1s rest on 4 positives.
    # - McRae: its CounterFact layer (not measured).
    ("toy", COUNTERFACT, 0, 1),
    ("toy", BIOSBIAS, 1, 0),
    ("toy", MCRAE, 0, None),
    # The 2-layer toy-small world: the toy's layers where they exist; its Bias in Bios layer 0
    # was not measured.
    ("toy-small", COUNTERFACT, 0, 1),
    ("toy-small", BIOSBIAS, 0, None),
    ("toy-small", MCRAE, 0, None),
    # The long-tail world for probing, with the toy's LM. Entity layer 1: best REMEDI Fact-Prior
    # MCC on 600 held-out samples (Fact-Med: no signal).
    ("toy-longtail", COUNTERFACT, 0, 1),
    ("toy-longtail", MCRAE, 0, None),
    # SmolLM2-135M (30 layers), CounterFact: layer 2, chosen by x.sweep.gen.counterfact on 100
    # validation cases of EasyEdit's train file (editors trained with MODEL_TRAINING's recipe at
    # layers 0/1/2/4/8; efficacy 42/79/97/96/97, paraphrase 43/79/98/96/97, neighborhood 64 at
    # every layer: the edit touches only the entity's tokens, which other prompts lack), by ROME's
    # score S (now --criterion rome_score). The reference's criterion, the sweeps' default since,
    # picks 2 on the same results: paraphrase alone there (no consistency in EasyEdit's format, no
    # generation run). The paper's GPT-J layer is 1 of 28; here layers 2-8 are on a plateau.
    ("smollm2-135m", COUNTERFACT, 2, None),
    # McRae: its CounterFact layer, as GPT-2's rows above (not swept for McRae).
    ("smollm2-135m", MCRAE, 2, None),
)
PAPER_SETTINGS: Mapping[str, Mapping[str, DatasetSettings]] = {
    model: {
        dataset: DatasetSettings(editor, entity)
        for name, dataset, editor, entity in _LAYERS
        if name == model
    }
    for model in dict.fromkeys(row[0] for row in _LAYERS)
}
"""The table: model (alias or toy world) -> dataset -> :class:`DatasetSettings`."""
NUM_LAYERS: Mapping[str, int] = {"gptj": 28, "gpt2-xl": 48, "gpt2": 12, "smollm2-135m": 30}
"""The number of layers of the paper's models (what a layer sweep covers); a toy world's comes
from its build config."""


@dataclass(frozen=True)
class TrainingRecipe:
    """How editors train for one model and dataset when the paper's loss settings (the training
    script's defaults) do not work there: the flags measured to work. The toy-world LMs (~1M
    parameters, trained from scratch) have one per dataset; SmolLM2 one for CounterFact."""

    flags: tuple[str, ...]
    test_size: str | None = None
    """Share of samples held out for evaluation (None: the script's default, 10%)."""

    def arguments(self) -> list[str]:
        """The flags of ``scripts.train_editors``."""
        test_size = ["--test-size", self.test_size] if self.test_size else []
        return [*self.flags, *test_size]


# All entity tokens, the attribute's last token, lr 1e-2, lam_kl 1.
_TOY_FLAGS = (
    "--use-all-entity-tokens",
    "--use-last-attribute-token",
    "--lr",
    "1e-2",
    "--lam-kl",
    "1",
)

TOY_TRAINING: Mapping[str, TrainingRecipe] = {
    COUNTERFACT: TrainingRecipe(_TOY_FLAGS),
    # A bio's attribute ends with other facts ("is a doctor who lives in Rome and works for
    # Amazon"), not with the occupation, so its last token misses it: with it, the layer-1 editor
    # reached 36.5% decontextual top-1 accuracy; with the mean over the attribute's tokens
    # (REMEDI's default), 71.2%. The toy export has only 500 samples, so 20% are held out (the
    # default 10% would leave ~50).
    BIOSBIAS: TrainingRecipe(
        tuple(flag for flag in _TOY_FLAGS if flag != "--use-last-attribute-token"),
        test_size="0.2",
    ),
    # The toy norms make ~200 samples: hold out a larger share.
    MCRAE: TrainingRecipe(_TOY_FLAGS, test_size="0.2"),
}
"""Dataset -> how its editors train on any toy world."""

# SmolLM2-135M (30 layers x 576) on CounterFact: the toy's recipe, which worked there unchanged
# (efficacy 90.0 at layer 1 on 150 test cases, where lam_kl 10 / lr 1e-3 / last entity token left
# every prediction as it was: 32.7 against 33.3 unedited; that lam_kl, the default then, was 16
# times the reference's KL weight, see training.loss.DEFAULT_LAM_KL). 1,215 training samples
# (1,093 train, 122 validation) and 2 epochs keep a run to minutes on 2 CPU cores; the layer
# sweep that chose the table's layer used the same (remedi/methods/hparams/README.md tells).
_SMOLLM2_COUNTERFACT = (*_TOY_FLAGS, "--max-train-samples", "1215", "--max-epochs", "2")

MODEL_TRAINING: Mapping[str, Mapping[str, TrainingRecipe]] = {
    # McRae (10,449 samples from the real norms) takes the CounterFact recipe unchanged: the same
    # 1,215 training samples and 2 epochs keep it to minutes on 2 CPU cores.
    "smollm2-135m": {
        COUNTERFACT: TrainingRecipe(_SMOLLM2_COUNTERFACT),
        MCRAE: TrainingRecipe(_SMOLLM2_COUNTERFACT),
    },
}
"""Model (alias) -> dataset -> how its editors train, where the paper's settings do not work."""


@dataclass(frozen=True)
class DataSource:
    """A dataset file a model's settings were chosen on, instead of the dataset's own download."""

    loader: str
    """The dataset loader that reads it (``-d`` of the scripts), e.g. ``counterfact_easyedit``."""
    shared_path: str
    """Its path under the shared data folder (``$REMEDI_SHARED_DATA``)."""
    where_from: str
    """Where a user gets the file (for the message when it is missing)."""


DEFAULT_DATA: Mapping[str, Mapping[str, DataSource]] = {
    # ROME's counterfact.json cannot be downloaded offline; EasyEdit's train file (10,000 of
    # CounterFact's 21,919 cases, in EasyEdit's reduced format) is what SmolLM2 was run on.
    "smollm2-135m": {
        COUNTERFACT: DataSource(
            "counterfact_easyedit",
            "counterfact_easyedit/counterfact-train.json",
            "EasyEdit's CounterFact split (counterfact-train.json, e.g. from the "
            "Jometeorie/KnowledgeSpread repository)",
        )
    },
}
"""Model (alias) -> dataset -> the file its settings were chosen on (see :class:`DataSource`)."""


# ---------------------------------------------------------------------------------------------
# Precision: the dtype each experiment loads its LM in on a GPU, as its reference did.

REMEDI = "remedi"
"""REMEDI: training editors and every evaluation of them (CounterFact, Bias in Bios, McRae)."""
WEIGHT_EDITING = "weight_editing"
"""ROME, MEMIT and FT judged on CounterFact (a REMEDI evaluation that runs a weight method)."""
TRACING = "tracing"
"""Causal tracing (ROME's ``experiments/causal_trace.py``)."""
EDIT_PROBLEMS = "edit_problems"
"""Does localization inform editing (Hase et al., google/belief-localization)."""
GENERAL_ABILITIES = "general_abilities"
"""General abilities after editing (Gu et al., JasonForJoy/Model-Editing-Hurt)."""


@dataclass(frozen=True)
class Precision:
    """What an experiment loads its LM in on a GPU when ``--dtype`` is not given: float32, except
    half precision (``half``) for models of at least ``half_from`` parameters (estimated from the
    config). On a CPU every experiment runs in float32."""

    half: str | None
    """``"float16"`` or ``"bfloat16"``; None: float32 at every size. bfloat16 falls back to
    float16 on a GPU without bfloat16."""
    half_from: int = 0
    reference: str = ""
    """What the reference loads, and where it says so."""


# The sizes that separate the references' models: GPT-2 XL has ~1.6e9 parameters (estimated
# 1.55e9), GPT-J 6e9, GPT-NeoX 20e9. The references chose by name; a size threshold between
# them gives the same choice for their models and a reasoned one for others (a 7B Llama loads
# as GPT-J does, SmolLM2 as GPT-2 does).
_ABOVE_GPT2_XL = 2_000_000_000
_NEOX_20B = 15_000_000_000

PRECISION: Mapping[str, Precision] = {
    REMEDI: Precision(
        "float16",
        _ABOVE_GPT2_XL,
        "evandez/REMEDI remedi/models.py:220-223 (fe16234): float16 for GPT-J and GPT-NeoX "
        "(the float16 revision of GPT-J), float32 for GPT-2 and GPT-2 XL",
    ),
    WEIGHT_EDITING: Precision(
        None,
        reference="kmeng01/rome experiments/evaluate.py:90 (0874014) and kmeng01/memit "
        "experiments/evaluate.py:93 (80426fd): from_pretrained without a dtype, float32 for "
        "every model, GPT-J included",
    ),
    TRACING: Precision(
        "float16",
        _NEOX_20B,
        "kmeng01/rome experiments/causal_trace.py:67 (0874014): float16 only for GPT-NeoX 20B, "
        "float32 otherwise",
    ),
    EDIT_PROBLEMS: Precision(
        "float16",
        _NEOX_20B,
        "google/belief-localization third_party/experiments/evaluate.py:780 (0886d8d): float16 "
        "only for a 20B model (which line 788 then refuses), float32 for GPT-2 XL and GPT-J",
    ),
    GENERAL_ABILITIES: Precision(
        None,
        reference="JasonForJoy/Model-Editing-Hurt easyeditor/editors/editor.py:68 (8f8d4dc): "
        "from_pretrained without a dtype (its EasyEdit has no fp16 hparam), float32",
    ),
}
"""Experiment -> :class:`Precision`: each experiment's default dtype is its reference's. (The
canonical-examples seed trains in bfloat16, ``ft_experiment.py:48,54,179`` at 15a1e7b; our
``canon`` configs choose their dtype, float32 unless ``dtype: bfloat16``.)"""

DEFAULT_PRECISION = Precision(
    "bfloat16",
    1_000_000_000,
    "none: a model loaded outside an experiment (the library's own choice: half precision from a "
    "billion parameters, bfloat16 for its range)",
)
"""The precision of a model loaded for no experiment in particular (``models.load_model``)."""


def precision(experiment: str | None) -> Precision:
    """The precision ``experiment`` (a key of :data:`PRECISION`) loads its LM in; None:
    :data:`DEFAULT_PRECISION`.

    Raises:
        KeyError: An experiment the table does not list (a programming error: add a row).
    """
    if experiment is None:
        return DEFAULT_PRECISION
    if experiment not in PRECISION:
        raise KeyError(f"no precision for experiment {experiment!r}; add it to PRECISION")
    return PRECISION[experiment]


def dtype_help(experiment: str | None) -> str:
    """The ``--dtype`` help of a script that runs ``experiment``: what it loads by default."""
    chosen = precision(experiment)
    if chosen.half is None:
        default = "float32"
    else:
        default = (
            f"float32 on a CPU; on a GPU {chosen.half} for models of "
            f"{chosen.half_from / 1e9:g}B parameters or more, else float32"
        )
    source = "the reference's" if experiment is not None else "ours"
    return f"model dtype, e.g. float32, bfloat16, float16 (default: {default}, {source})"


def is_toy(model: str) -> bool:
    """Whether ``model`` names a toy world (``toy``, ``toy-small``, ``toy-small-gptj``, ...)."""
    return model.startswith("toy")


def settings_name(model: str) -> str:
    """The name ``model`` is listed under in :data:`PAPER_SETTINGS`: its alias if it is the
    Hugging Face name of an aliased model (``EleutherAI/gpt-j-6B`` -> ``gptj``), else itself."""
    if model in PAPER_SETTINGS:
        return model
    from remedi.models import MODEL_ALIASES  # imported here: it loads torch

    aliases = {hub_name: alias for alias, hub_name in MODEL_ALIASES.items()}
    return aliases.get(model, model)


def dataset_settings(model: str, dataset: str) -> DatasetSettings | None:
    """The paper's settings of ``model`` (alias or hub name) on ``dataset``; None if unknown."""
    return PAPER_SETTINGS.get(settings_name(model), {}).get(dataset)


def editor_layer(model: str, dataset: str) -> int | None:
    """The paper's editor layer of ``model`` on ``dataset``; None if the table has none."""
    found = dataset_settings(model, dataset)
    return None if found is None else found.editor_layer


def entity_layer(model: str, dataset: str) -> int | None:
    """The paper's entity (classification) layer of ``model`` on ``dataset``; None if unknown."""
    found = dataset_settings(model, dataset)
    return None if found is None else found.entity_layer


def models_with(dataset: str, entity: bool = False) -> list[str]:
    """The models with an editor layer (``entity``: an entity layer) on ``dataset``, each by its
    alias and by the hub name it stands for, sorted: what an error message offers."""
    from remedi.models import MODEL_ALIASES

    names = []
    for model, datasets in PAPER_SETTINGS.items():
        found = datasets.get(dataset)
        if found is None or (entity and found.entity_layer is None):
            continue
        names.append(model)
        if MODEL_ALIASES.get(model, model) != model:
            names.append(MODEL_ALIASES[model])
    return sorted(names)


def num_layers(model: str) -> int | None:
    """How many layers ``model`` has: the table's count, a toy world's from its build config,
    else None.

    Raises:
        UsageError: ``model`` looks like a toy world but names none (the message lists them).
    """
    if settings_name(model) in NUM_LAYERS:
        return NUM_LAYERS[settings_name(model)]
    if is_toy(model):
        from remedi.toy.build import default_config  # imported here: it loads torch

        return default_config(model).lm.num_layers
    return None


def training_flags(model: str, dataset: str) -> list[str]:
    """The training flags measured to work for ``model`` on ``dataset``: a toy LM's (CounterFact's
    for a dataset without its own), a real model's from :data:`MODEL_TRAINING`, else none (the
    paper's settings, the training script's defaults)."""
    if is_toy(model):
        return TOY_TRAINING.get(dataset, TOY_TRAINING[COUNTERFACT]).arguments()
    recipe = MODEL_TRAINING.get(settings_name(model), {}).get(dataset)
    return [] if recipe is None else recipe.arguments()


def default_data(model: str, dataset: str) -> DataSource | None:
    """Where ``model``'s settings on ``dataset`` were chosen, if not the dataset's own download
    (:data:`DEFAULT_DATA`); None: the dataset's default."""
    return DEFAULT_DATA.get(settings_name(model), {}).get(dataset)
