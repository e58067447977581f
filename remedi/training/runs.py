"""A training run on disk: arguments, entity-disjoint splits, one editor per (type, layer), resuming."""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from dataclasses_json import DataClassJsonMixin

from remedi import data, editors, env, errors, io, models, precompute, settings
from remedi.training.fit import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LR,
    DEFAULT_MAX_EPOCHS,
    DEFAULT_PATIENCE,
    TrainingConfig,
    TrainingLog,
    train_editor,
)
from remedi.training.loss import (
    DEFAULT_KL_DIRECTION,
    DEFAULT_LAM_KL,
    DEFAULT_LAM_M,
    DEFAULT_LAM_U,
    KL_EDITED_ORIGINAL,
    LossWeights,
    check_kl_direction,
)

logger = logging.getLogger(__name__)


DEFAULT_HOLD_OUT = 0.1
DEFAULT_TEST_SIZE = 0.1
DEFAULT_MAX_TRAIN_SAMPLES = 5000
# Datasets without an "unmediated" target to push down (the reference turns lam_u off there).
DATASETS_WITHOUT_LAM_U = frozenset({"biosbias", "mcrae"})
ARGS_FILE = "args.json"
TRAIN_LOG_FILE = "train_log.json"


# ---------------------------------------------------------------------------------------
# A training run: split, precompute, train one editor per (type, layer), save.


@dataclass
class RunArgs(DataClassJsonMixin):
    """The arguments of a training run (saved in ``args.json``)."""

    name: str
    model: str
    dataset: str = "counterfact"
    layers: list[int] | None = None
    """None: every layer of the model."""
    editor_types: list[str] = field(default_factory=lambda: ["linear"])
    dataset_file: str | None = None
    random_init: bool = False
    """Train on the randomly initialised control model (``models.load_model(random_init=True)``)."""
    counterfact_prompt: str = "paraphrase"
    """CounterFact samples' prompt: "paraphrase" (the cleaned first paraphrase prompt, as in
    the REMEDI reference) or "rewrite" (see ``remedi.data.counterfact_record_sample``)."""
    biosbias_max_records: int | None = data.BIOSBIAS_MAX_RECORDS
    """Bias in Bios: read the file's first this many records, as the reference (None: all; 0 is
    read as None). ``args.json`` files of Bias in Bios runs without it read every record."""
    max_epochs: int = DEFAULT_MAX_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    patience: int = DEFAULT_PATIENCE
    lam_m: float | None = DEFAULT_LAM_M
    lam_u: float | None = None
    """None: 1 for datasets with an unmediated target (CounterFact), else off."""
    lam_kl: float | None = DEFAULT_LAM_KL
    lam_norm: float | None = None
    lam_ess: float | None = None
    lam_rel: float | None = None
    """The relation term's weight (None: off; see :func:`remedi.training.relation_kl`)."""
    max_relation_prompts: int = data.DEFAULT_MAX_RELATION_PROMPTS
    """Prompts about other relations per sample, for the relation term."""
    kl_direction: str = DEFAULT_KL_DIRECTION
    """Direction of the KL terms (see :class:`LossWeights`). ``args.json`` files without it
    (written before it existed, when training used "edited||original") load with the default."""
    hold_out: float = DEFAULT_HOLD_OUT
    """Fraction of the training pool held out (by entity) for early stopping."""
    test_size: float = DEFAULT_TEST_SIZE
    """Fraction of the dataset held out (by entity) for evaluation; never trained on."""
    max_train_samples: int | None = DEFAULT_MAX_TRAIN_SAMPLES
    """Train (+ validation) on the first this many samples of the training pool."""
    use_entity: bool = False
    use_all_entity_tokens: bool = False
    use_last_attribute_token: bool = False
    """Read the attribute's last token instead of the mean over its tokens (not REMEDI's
    default; see the module docstring)."""
    rank: int | None = None
    device: str | None = None
    dtype: str | None = None
    precompute_batch_size: int = precompute.DEFAULT_PRECOMPUTE_BATCH_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        check_kl_direction(self.kl_direction)
        self.biosbias_max_records = data.biosbias_record_limit(self.biosbias_max_records)

    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments for ``data.load_dataset`` of this run's dataset."""
        if self.dataset in data.COUNTERFACT_DATASETS:
            return {"prompt_source": self.counterfact_prompt}
        if self.dataset == "biosbias":
            return {"max_records": self.biosbias_max_records}
        return {}

    def loss_weights(self) -> LossWeights:
        lam_u = self.lam_u
        if lam_u is None and self.dataset not in DATASETS_WITHOUT_LAM_U:
            lam_u = DEFAULT_LAM_U
        return LossWeights(
            lam_m=self.lam_m,
            lam_u=lam_u,
            lam_kl=self.lam_kl,
            lam_norm=self.lam_norm,
            lam_ess=self.lam_ess,
            lam_rel=self.lam_rel,
            kl_direction=self.kl_direction,
        )

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            patience=self.patience,
            seed=self.seed,
            weights=self.loss_weights(),
        )

    def editor_options(self, editor_type: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "input_last_entity_token": not self.use_all_entity_tokens,
            "edit_last_entity_token": not self.use_all_entity_tokens,
            "input_last_attribute_token": self.use_last_attribute_token,
            "lam_rel": self.lam_rel,
        }
        if editor_type in ("linear", "mlp"):
            options["use_entity"] = self.use_entity
        if editor_type == "linear":
            options["rank"] = self.rank
        return options


# Arguments that may change between runs into the same directory (what to train, and where);
# any other change would mix editors trained differently in one run.
_RESUMABLE_ARGS = frozenset({"layers", "editor_types", "device", "precompute_batch_size"})


@dataclass
class RunSplit(DataClassJsonMixin):
    """Sample ids of a run's splits: no entity is in two of them."""

    train: list[str]
    validation: list[str]
    test: list[str]


@dataclass
class RunRecord(DataClassJsonMixin):
    """``args.json``: the exact arguments, the seed, the model's hidden size and the split."""

    args: RunArgs
    seed: int
    model_name: str
    hidden_size: int
    split: RunSplit

    def dataset_file_or(self, dataset_file: Path | None) -> Path | None:
        """``dataset_file`` where one is given, else the file this run trained on (``None``: its
        dataset's default file), for an evaluation of the run's test split."""
        if dataset_file is None and self.args.dataset_file:
            return Path(self.args.dataset_file)
        return dataset_file


def run_dir(name: str) -> Path:
    """Results directory of the run called ``name``."""
    return env.results_dir() / name


def editor_dir(run_directory: Path, editor_type: str, layer: int) -> Path:
    return Path(run_directory) / editor_type / str(layer)


def is_editor_done(directory: Path) -> bool:
    """Whether ``directory`` holds a finished editor (its files are written last-to-first)."""
    return all(
        (Path(directory) / name).is_file()
        for name in (editors.WEIGHTS_FILE, editors.CONFIG_FILE, TRAIN_LOG_FILE)
    )


def load_run(run_directory: Path, dataset: str | None = None, fix: str = "") -> RunRecord:
    """Read a run's ``args.json`` (arguments, seed, and split).

    With ``dataset``, the run must have trained on it: else a :class:`MismatchError` whose
    message ends with ``fix`` (what to train or pass instead).
    """
    path = Path(run_directory) / ARGS_FILE
    if not path.is_file():
        raise errors.MissingFileError(
            f"no training run at {run_directory} (no {ARGS_FILE} there): pass the directory "
            "that scripts.train_editors wrote (results/NAME), or train the editors first"
        )
    raw = io.read_json(path, "training run arguments")
    if isinstance(raw, dict) and isinstance(raw.get("args"), dict):
        # Runs saved before these options existed used CounterFact's rewrite prompt and
        # KL(edited || original): read them as they were trained, so that resuming one with
        # today's defaults is refused as a change of settings instead of mixing the two.
        raw["args"].setdefault("counterfact_prompt", "rewrite")
        raw["args"].setdefault("kl_direction", KL_EDITED_ORIGINAL)
        # Bias in Bios runs saved before the record limit existed read every record; for other
        # datasets the limit means nothing, so they get today's default and resume as before.
        was_biosbias = raw["args"].get("dataset") == "biosbias"
        raw["args"].setdefault(
            "biosbias_max_records", None if was_biosbias else data.BIOSBIAS_MAX_RECORDS
        )
    try:
        record = RunRecord.from_dict(raw)
    except (KeyError, TypeError, ValueError) as error:
        raise errors.FileFormatError(
            f"{path} is not a training run record ({error}); was it written by "
            "scripts/train_editors.py?"
        ) from error
    if dataset is not None and record.args.dataset != dataset:
        raise errors.MismatchError(
            f"the editors in {run_directory} were trained on {record.args.dataset!r}; {fix}"
        )
    return record


def list_run_editors(run_directory: Path) -> dict[str, list[int]]:
    """Finished editors of a run: editor type -> sorted layers."""
    found: dict[str, list[int]] = {}
    for editor_type in editors.EDITOR_TYPES:
        type_dir = Path(run_directory) / editor_type
        if not type_dir.is_dir():
            continue
        layers = sorted(
            int(child.name)
            for child in type_dir.iterdir()
            if child.name.isdigit() and is_editor_done(child)
        )
        if layers:
            found[editor_type] = layers
    return found


def load_run_editor(
    run_directory: Path,
    layer: int,
    editor_type: str = "linear",
    mt: models.ModelAndTokenizer | None = None,
) -> editors.Editor:
    """Load the editor a run trained for ``editor_type`` at ``layer``."""
    directory = editor_dir(run_directory, editor_type, layer)
    if not is_editor_done(directory):
        available = list_run_editors(run_directory)
        raise errors.MissingFileError(
            f"no finished {editor_type} editor for layer {layer} in {run_directory} "
            f"(finished: {available or 'none'}); train it with scripts.train_editors "
            f"-l {layer} -t {editor_type}"
        )
    return editors.load_editor(directory, mt)


def load_run_samples(
    run_directory: Path, split: str = "test", dataset_file: Path | None = None
) -> datasets.Dataset:
    """The samples of one split of a run ("train", "validation" or "test"), in saved order.

    Reloads the run's dataset (from ``dataset_file`` if given, else the file the run used).
    The "test" split holds only entities the editors never saw.
    """
    record = load_run(run_directory)
    ids = getattr(record.split, split, None)
    if ids is None:
        raise errors.UsageError(f"unknown split {split!r}; use train, validation or test")
    file = dataset_file or record.args.dataset_file
    samples = data.load_dataset(
        record.args.dataset, file=Path(file) if file else None, **record.args.dataset_options()
    )
    return data.select_ids(samples, ids)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_samples(
    samples: datasets.Dataset, args: RunArgs
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """Train, validation and test samples, pairwise entity-disjoint, as ``args`` asks."""
    outer = data.entity_disjoint_split(samples, test_size=args.test_size, seed=args.seed)
    pool = outer["train"]
    if args.max_train_samples is not None and len(pool) > args.max_train_samples:
        pool = pool.select(range(args.max_train_samples))
    inner = data.entity_disjoint_split(pool, test_size=args.hold_out, seed=args.seed)
    return inner["train"], inner["test"], outer["test"]


def _check_resumable(record: RunRecord, previous: RunRecord, directory: Path) -> None:
    old, new = asdict(previous.args), asdict(record.args)
    # One file named by two paths (relative here, absolute from a task) is the same data.
    for args in (old, new):
        if args.get("dataset_file"):
            args["dataset_file"] = str(Path(args["dataset_file"]).resolve())
    changed = sorted(
        key for key in new if key not in _RESUMABLE_ARGS and old.get(key) != new.get(key)
    )
    if previous.split != record.split:
        changed.append("split (the dataset changed)")
    if changed:
        raise errors.MismatchError(
            f"{directory} holds a run with other settings ({', '.join(changed)}); adding editors "
            "to it would mix runs. Use another name (-n) or retrain it all with --clear-results"
        )


def clear_run(directory: Path) -> None:
    """Remove a run's arguments and editors (other files, e.g. evaluations, stay)."""
    for editor_type in editors.EDITOR_TYPES:
        shutil.rmtree(Path(directory) / editor_type, ignore_errors=True)
    (Path(directory) / ARGS_FILE).unlink(missing_ok=True)


def train_run(
    args: RunArgs,
    mt: models.ModelAndTokenizer | None = None,
    clear_results: bool = False,
) -> Path:
    """Train one editor per (type, layer) and save each as soon as it is done.

    Layers whose editor is already saved are skipped (``clear_results`` retrains everything).
    Returns the run's directory.
    """
    for editor_type in args.editor_types:
        if editor_type not in editors.EDITOR_TYPES:
            raise errors.UsageError(
                f"unknown editor type {editor_type!r}; known: {', '.join(editors.EDITOR_TYPES)}"
            )
    directory = run_dir(args.name)
    if clear_results:
        clear_run(directory)
    seed_everything(args.seed)
    if mt is None:
        mt = models.load_model(
            args.model,
            device=args.device,
            dtype=args.dtype,
            random_init=args.random_init,
            experiment=settings.REMEDI,
        )
    layers = list(args.layers) if args.layers is not None else list(models.determine_layers(mt))
    models.determine_layer_paths(mt.model, layers)

    samples = data.load_dataset(
        args.dataset,
        file=Path(args.dataset_file) if args.dataset_file else None,
        **args.dataset_options(),
    )
    train, validation, test = split_samples(samples, args)
    logger.info(
        "%d samples: %d train, %d validation, %d test (entity-disjoint)",
        len(samples),
        len(train),
        len(validation),
        len(test),
    )
    record = RunRecord(
        args=args,
        seed=args.seed,
        model_name=mt.name,
        hidden_size=models.determine_hidden_size(mt.model),
        split=RunSplit(train=train["id"], validation=validation["id"], test=test["id"]),
    )
    if (directory / ARGS_FILE).is_file():
        _check_resumable(record, load_run(directory), directory)
    io.write_json(directory / ARGS_FILE, record.to_dict())

    todo = [
        (editor_type, layer)
        for editor_type in args.editor_types
        for layer in layers
        if not is_editor_done(editor_dir(directory, editor_type, layer))
    ]
    skipped = len(args.editor_types) * len(layers) - len(todo)
    if skipped:
        logger.info("skipping %d editors already trained in %s", skipped, directory)
    if not todo:
        return directory

    todo_layers = sorted({layer for _, layer in todo})
    train_inputs = precompute.editor_inputs(
        mt, train, todo_layers, batch_size=args.precompute_batch_size, desc="precompute train"
    )
    val_inputs = precompute.editor_inputs(
        mt, validation, todo_layers, batch_size=args.precompute_batch_size, desc="precompute val"
    )
    if args.lam_rel is not None:
        prompts = relation_prompts(args)
        train_inputs = train_inputs.with_relation_prompts(prompts)
        val_inputs = val_inputs.with_relation_prompts(prompts)
    config = args.training_config()
    for editor_type, layer in todo:
        logger.info("training %s editor at layer %d", editor_type, layer)
        seed_everything(args.seed)
        editor = editors.new_editor(editor_type, mt, layer, **args.editor_options(editor_type))
        log = train_editor(mt, editor, train_inputs, val_inputs, config)
        save_trained_editor(editor, log, editor_dir(directory, editor_type, layer))
    return directory


def relation_prompts(args: RunArgs) -> dict[str, list[str]]:
    """Sample id -> prompts about its entity under other relations, for the relation term: the
    relation templates of the run's CounterFact-format dataset filled with the sample's subject
    (:class:`remedi.data.RelationTemplates`). A toy world's export leaves out the relations its
    world (``world.json`` beside the file) says the edited one implies."""
    loader = data.COUNTERFACT_RECORD_LOADERS.get(args.dataset)
    if loader is None:
        raise errors.UsageError(
            f"--lam-rel needs prompts about the entities' other relations, which only "
            f"CounterFact-format data has ({', '.join(data.COUNTERFACT_RECORD_LOADERS)}), not "
            f"{args.dataset!r}; drop --lam-rel"
        )
    file = Path(args.dataset_file) if args.dataset_file else None
    records = loader(file)
    implied: dict[str, set[str]] = {}
    world_file = file.parent / "world.json" if file is not None else None
    if world_file is not None and world_file.is_file():
        raw = io.read_json(world_file, "toy world file")
        for implication in raw.get("implications", []):
            implied.setdefault(implication["if_relation"], set()).add(implication["then_relation"])
    templates = data.RelationTemplates.from_records(records, implied)
    return templates.prompts_by_sample_id(records, args.max_relation_prompts)


def save_trained_editor(editor: editors.Editor, log: TrainingLog, directory: Path) -> None:
    """Save an editor and its training log; the log goes last and marks the editor done."""
    editors.save_editor(editor, directory)
    io.write_json(Path(directory) / TRAIN_LOG_FILE, log.to_dict())
