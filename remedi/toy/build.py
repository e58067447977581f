"""Build a toy world end to end: knowledge base, tokenizer, trained LM, datasets, report.

World names: ``"toy"`` (the default world), ``"toy-small"`` (a few dozen entities, for
tests) and ``"toy-longtail"`` (entities of graded popularity, see :mod:`remedi.toy.popularity`:
the world whose LM knows some facts and not others, for the probing benchmark), each optionally suffixed with an architecture, e.g. ``"toy-gptj"``, ``"toy-small-llama"``
(see :data:`remedi.toy.lm.ARCHITECTURES`; without a suffix the LM is GPT-2). The model and its
tokenizer go under ``models_dir()/name`` (``AutoModelForCausalLM.from_pretrained`` loads them),
the datasets under ``data_dir()/name``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from remedi import env, errors, io
from remedi.toy import corpus, export
from remedi.toy import mcrae as toy_mcrae
from remedi.toy.lm import (
    ARCHITECTURES,
    LMSettings,
    build_model,
    fact_recall,
    next_token_logprobs,
    seed_everything,
    torch_threads,
    train_lm,
    value_token_id,
)
from remedi.toy.popularity import (
    LONG_TAIL_TIERS,
    PopularityTier,
    assign_popularity,
    fact_sentence_counts,
)
from remedi.toy.tokenizer import train_bpe_tokenizer
from remedi.toy.world import World, generate_world

logger = logging.getLogger(__name__)

REPORT_FILE = "build_report.json"
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ToyWorldPaths:
    """Where a built toy world lives."""

    name: str
    model_dir: Path
    data_dir: Path
    counterfact_file: Path
    attribute_snippets_file: Path
    idf_file: Path
    tfidf_vocab_file: Path
    world_file: Path

    @property
    def report_file(self) -> Path:
        """``build_report.json``, written last: its presence marks a complete build."""
        return self.model_dir / REPORT_FILE

    @property
    def biosbias_file(self) -> Path:
        """The toy Bias in Bios export (``biosbias.json``). Not one of :meth:`data_files`:
        worlds built before it existed are complete without it (see :func:`ensure_toy_biosbias`)."""
        return self.data_dir / "biosbias.json"

    @property
    def mcrae_file(self) -> Path:
        """The toy feature norms in McRae's format (see :mod:`remedi.toy.mcrae`). Not one of
        :meth:`data_files`, like :attr:`biosbias_file` (see :func:`ensure_toy_mcrae`)."""
        return self.data_dir / toy_mcrae.TOY_MCRAE_FILE_NAME

    def data_files(self) -> tuple[Path, ...]:
        return (
            self.counterfact_file,
            self.attribute_snippets_file,
            self.idf_file,
            self.tfidf_vocab_file,
            self.world_file,
        )

    def model_is_built(self) -> bool:
        """Whether the model half of a complete build is present (its report is written last)."""
        model_files = (self.model_dir / "config.json", self.model_dir / "tokenizer.json")
        return all(p.is_file() for p in (self.report_file, *model_files))

    def is_built(self) -> bool:
        """Whether every file of a complete build is present."""
        return self.model_is_built() and all(p.is_file() for p in self.data_files())


@dataclass(frozen=True)
class ToyWorldConfig:
    """Everything a build depends on; the same config and seed build the same world."""

    num_entities: int = 250
    test_fraction: float = 0.2
    biographies_per_entity: int = 2
    max_continuation: int = 3
    """Each fact sentence is followed by up to this many sentences about the same entity."""
    binding_fraction: float = 0.5
    """In-context binding documents per fact sentence (see :func:`corpus.binding_documents`):
    without them the LM only memorises and never learns to use facts stated in its context."""
    binding: corpus.BindingSettings = field(default_factory=corpus.BindingSettings)
    vocab_size: int = 1024
    lm: LMSettings = field(default_factory=LMSettings)
    popularity: tuple[PopularityTier, ...] | None = None
    """Popularity tiers setting each entity's exposure in the corpus (see
    :mod:`remedi.toy.popularity`); None: every entity is exposed alike (the default worlds)."""
    keep_unknown_records: bool = False
    """Export CounterFact records whose fact the LM does not know too (by default a record is
    dropped unless the LM ranks ``target_true`` above ``target_new``, see
    :func:`filter_known_records`). A long-tail world keeps them: whether the LM knows a rare
    entity's fact is what its probe is asked to predict."""


SIZES: dict[str, ToyWorldConfig] = {
    "toy": ToyWorldConfig(),
    "toy-small": ToyWorldConfig(
        num_entities=40,
        vocab_size=1024,
        lm=LMSettings(num_layers=2, hidden_size=64, num_heads=4, epochs=14, batch_size=16),
    ),
    # Entities of graded popularity (a long tail), so that the LM knows facts at graded
    # strength: in the default world every fact is stated equally often, the LM knows ~all of
    # them, and a probe of the entity's hidden state has nothing to predict (see
    # remedi.evaluation.probing.classification). Misstatements of a fact stated n times are corrected
    # with probability n / (n + 2), so the LM resists contexts that contradict well-known facts
    # (measured: it follows 24/27/72/86% of CounterFact contexts for head/torso/tail/rare
    # entities; with 6 instead of 2, head entities resisted only half of them; with 1, the
    # probe's scores were the same as with 2).
    "toy-longtail": ToyWorldConfig(
        num_entities=300,
        popularity=LONG_TAIL_TIERS,
        keep_unknown_records=True,
        binding=corpus.BindingSettings(correction_half=2.0),
    ),
}
"""Registry: world size name -> its build config (an architecture suffix changes ``lm.arch``)."""


def parse_toy_name(name: str) -> tuple[str, str]:
    """Split ``"toy-small-gptj"`` into its size (``"toy-small"``) and architecture (``"gptj"``)."""
    for size in sorted(SIZES, key=len, reverse=True):
        if name == size:
            return size, "gpt2"
        prefix = size + "-"
        if name.startswith(prefix) and name[len(prefix) :] in ARCHITECTURES:
            return size, name[len(prefix) :]
    valid = ", ".join(f"{size}[-{'|'.join(ARCHITECTURES)}]" for size in SIZES)
    raise errors.UsageError(f"unknown toy world {name!r}; valid names: {valid}")


def toy_world_name(small: bool = False, arch: str = "gpt2") -> str:
    """The world name for a size and an architecture (GPT-2 has no suffix)."""
    name = "toy-small" if small else "toy"
    return name if arch == "gpt2" else f"{name}-{arch}"


def default_config(name: str) -> ToyWorldConfig:
    """The build config of world ``name`` (its size's config, with its architecture)."""
    size, arch = parse_toy_name(name)
    config = SIZES[size]
    return dataclasses.replace(config, lm=dataclasses.replace(config.lm, arch=arch))


def toy_world_paths(name: str = "toy") -> ToyWorldPaths:
    """Paths of world ``name`` under the current models and data directories."""
    parse_toy_name(name)
    model_dir = env.models_dir() / name
    data_dir = env.data_dir() / name
    return ToyWorldPaths(
        name=name,
        model_dir=model_dir,
        data_dir=data_dir,
        counterfact_file=data_dir / "counterfact.json",
        attribute_snippets_file=data_dir / "attribute_snippets.json",
        idf_file=data_dir / "idf.npy",
        tfidf_vocab_file=data_dir / "tfidf_vocab.json",
        world_file=data_dir / "world.json",
    )


def toy_world_of_model(model: str) -> ToyWorldPaths | None:
    """The toy world whose LM ``model`` names; None for a model that is no toy world's.

    ``model`` is a model name as :func:`remedi.models.load_model` takes it: a world's name
    (``toy``, ``toy-small``, ``toy-longtail``, each optionally ``-<arch>``), possibly with a
    variant suffix after ``+`` (``toy-small+random123456``), or the folder a world's LM was built
    in (``models_dir()/<world>``). This is the one place that maps a model to its world.

    Raises:
        errors.UsageError: A name in the toy's pattern (``toy-...``) that names no world; the
            message lists the valid names.
    """
    name = model.split("+", 1)[0].rstrip("/")
    path = Path(name).expanduser()
    if path.exists():
        # A folder is a world's model only where the builder puts it.
        if path.resolve().parent != env.models_dir().resolve():
            return None
        name = path.name
        try:
            parse_toy_name(name)
        except errors.UsageError:
            return None
        return toy_world_paths(name)
    if name != "toy" and not name.startswith("toy-"):
        return None
    return toy_world_paths(name)


def read_build_report(name: str = "toy") -> dict[str, Any]:
    """The ``build_report.json`` of a built world."""
    report: dict[str, Any] = io.read_json(toy_world_paths(name).report_file, "toy build report")
    return report


def ensure_toy_world(
    name: str = "toy",
    rebuild: bool = False,
    seed: int | None = None,
    config: ToyWorldConfig | None = None,
) -> ToyWorldPaths:
    """Return the paths of world ``name``, building it first if it is absent.

    A complete build is reused unless ``rebuild`` is set or it was built with another ``seed``
    (``None``: any seed is fine; a new build uses seed 0). ``config`` replaces the size's
    default build config when building (tests use it to build quickly); a reused build keeps
    the config it was built with (see its ``build_report.json``). Concurrent callers wait for each
    other instead of building twice.
    """
    paths = toy_world_paths(name)
    with _build_lock(paths):
        missing_data = [path for path in paths.data_files() if not path.is_file()]
        if not rebuild and paths.model_is_built() and missing_data:
            # A finished model without its data is a data folder pointed elsewhere (e.g.
            # REMEDI_MODELS_DIR set without REMEDI_DATA_DIR), not an interrupted build: a
            # rebuild would delete a model that another checkout may be using.
            raise errors.UsageError(
                f"toy world {name!r}: its model at {paths.model_dir} is built, but its data is "
                f"not at {paths.data_dir} (missing {', '.join(p.name for p in missing_data)}); "
                "point REMEDI_DATA_DIR at the data folder it was built with, or rebuild both "
                "with `invoke x.toy.build --rebuild` and the flags it was built with "
                "(ensure_toy_world(rebuild=True))"
            )
        if paths.is_built() and not rebuild:
            built_seed = read_build_report(name).get("seed")
            if seed is None or built_seed == seed:
                logger.debug("reusing toy world %s at %s", name, paths.model_dir)
                return paths
            logger.info(
                "toy world %s was built with seed %s; rebuilding with seed %s",
                name,
                built_seed,
                seed,
            )
        # A warning, so that it shows even where logging is not configured: the call that
        # triggered the build (e.g. load_model("toy")) is about to take minutes.
        logger.warning(
            "building toy world %r (model in %s, data in %s); this takes a few minutes on a CPU",
            name,
            paths.model_dir,
            paths.data_dir,
        )
        build_toy_world(paths, seed=DEFAULT_SEED if seed is None else seed, config=config)
    return paths


@contextlib.contextmanager
def _build_lock(paths: ToyWorldPaths) -> Iterator[None]:
    """An exclusive lock per world, so parallel processes do not build it twice at once."""
    paths.model_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_file = paths.model_dir.parent / f".{paths.name}.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no locking, builds are rare there.
        yield
        return
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_toy_world(
    paths: ToyWorldPaths, seed: int = DEFAULT_SEED, config: ToyWorldConfig | None = None
) -> dict[str, Any]:
    """Build world ``paths.name`` from scratch into ``paths``; return the build report."""
    config = config or default_config(paths.name)
    start = time.monotonic()
    load_before = _load_average()
    paths.report_file.unlink(missing_ok=True)
    for directory in (paths.model_dir, paths.data_dir):
        if directory.exists():
            shutil.rmtree(directory)

    seed_everything(seed)
    world = generate_world(
        seed,
        config.num_entities,
        test_fraction=config.test_fraction,
        biographies_per_entity=config.biographies_per_entity,
    )
    if config.popularity is not None:
        assign_popularity(world, config.popularity)
    tokenizer = train_bpe_tokenizer(
        corpus.tokenizer_texts(world), vocab_size=config.vocab_size, min_frequency=2
    )
    tokenizer.model_max_length = config.lm.max_positions
    for relation in world.relations:
        for value in relation.values:
            value_token_id(tokenizer, value)

    with torch_threads(config.lm.num_threads):
        documents = corpus.training_documents(
            world,
            config.max_continuation,
            config.binding_fraction,
            config.binding,
            config.popularity,
        )
        model = build_model(config.lm, tokenizer, seed)
        logger.info(
            "training a %d-parameter %s on %d documents about %d entities",
            model.num_parameters(),
            config.lm.arch,
            len(documents),
            len(world.entities),
        )
        training = train_lm(model, tokenizer, documents, config.lm, seed)
        model.requires_grad_(False)

        fact_counts = fact_sentence_counts(world, config.popularity) if config.popularity else None
        recall = _recall_report(world, model, tokenizer, fact_counts)
        records = export.counterfact_records(world, seed)
        kept, dropped = filter_known_records(records, model, tokenizer)
        unknown = len(dropped)
        if config.keep_unknown_records:
            kept, dropped = records, []
            logger.info(
                "kept all %d CounterFact records, %d of them about facts the LM does not rank "
                "above target_new",
                len(records),
                unknown,
            )
        if dropped:
            logger.info(
                "dropped %d of %d CounterFact records whose target_true the LM does not rank above "
                "target_new",
                len(dropped),
                len(records),
            )
        export.validate_counterfact_records(kept, source=str(paths.counterfact_file))
    snippets = export.attribute_snippets(world)
    idf, vocabulary = export.tfidf_statistics(
        [text for texts in world.biographies.values() for text in texts]
    )

    io.write_json(paths.world_file, world.to_json())
    io.write_json(paths.biosbias_file, export.biosbias_records(world))
    toy_mcrae.write_mcrae_norms(world, paths.mcrae_file)
    io.write_json(paths.counterfact_file, kept)
    io.write_json(paths.attribute_snippets_file, snippets)
    io.write_json(paths.tfidf_vocab_file, vocabulary, indent=None)
    io.atomic_write(paths.idf_file, lambda tmp: _save_npy(tmp, idf))
    model.save_pretrained(paths.model_dir)
    tokenizer.save_pretrained(paths.model_dir)
    _use_portable_tokenizer_class(paths.model_dir)

    report = {
        "name": paths.name,
        "seed": seed,
        "arch": config.lm.arch,
        "config": dataclasses.asdict(config),
        "world": {
            "num_entities": len(world.entities),
            "num_train_entities": sum(e.split == "train" for e in world.entities),
            "num_test_entities": sum(e.split == "test" for e in world.entities),
            "num_relations": len(world.relations),
            "num_facts": len(world.entities) * len(world.relations),
            "num_training_documents": len(documents),
            "mean_name_tokens": statistics.mean(
                len(tokenizer(e.name, add_special_tokens=False)["input_ids"])
                for e in world.entities
            ),
        },
        "model": {
            "num_parameters": model.num_parameters(),
            "vocab_size": len(tokenizer),
            "num_layers": config.lm.num_layers,
            "hidden_size": config.lm.hidden_size,
        },
        "training": dataclasses.asdict(training),
        "recall": recall,
        "counterfact": {
            "records": len(records),
            "kept": len(kept),
            "dropped": len(dropped),
            "unknown": unknown,
        },
        "build_seconds": time.monotonic() - start,
        "machine": {
            "torch_threads": config.lm.num_threads or torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": _load_average(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    io.write_json(paths.report_file, report)
    logger.info(
        "built toy world %s in %.0f s: recall %.1f%% (training templates), %.1f%% (held-out)",
        paths.name,
        report["build_seconds"],
        100 * recall["train_templates"],
        100 * recall["heldout_templates"],
    )
    return report


def _use_portable_tokenizer_class(model_dir: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``, which transformers 4 and 5 both
    load from ``tokenizer.json`` (transformers 5 writes its own class name, unknown to 4)."""
    config_file = model_dir / "tokenizer_config.json"
    tokenizer_config = io.read_json(config_file, "tokenizer config")
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    io.write_json(config_file, tokenizer_config)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _recall_report(
    world: World,
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    fact_counts: dict[tuple[str, str], int] | None = None,
) -> dict[str, Any]:
    """Top-1 recall of true values on training and held-out templates: overall, by relation,
    by template, by the entity split used for editors, and (in a long-tail world) by
    popularity tier and by the number of fact sentences that state the fact (``fact_counts``)."""
    report: dict[str, Any] = {"by_relation": {}, "by_template": {}, "by_split": {}}
    split_of = {entity.name: entity.split for entity in world.entities}
    popularity_of = {entity.name: entity.popularity for entity in world.entities}
    if any(popularity_of.values()):
        report["by_popularity"] = {}
    if fact_counts is not None:
        report["by_fact_sentences"] = {}
    for heldout, key in ((False, "train_templates"), (True, "heldout_templates")):
        prompts = corpus.fact_prompts(world, heldout=heldout)
        correct = fact_recall(model, tokenizer, prompts)
        report[key] = _mean(correct)
        groups: dict[tuple[str, str, str], list[bool]] = {}
        for hit, prompt in zip(correct, prompts, strict=True):
            tier = popularity_of[prompt.entity]
            for group in (
                ("by_relation", prompt.relation_id, key),
                ("by_template", prompt.template, key),
                ("by_split", split_of[prompt.entity], key),
                *((("by_popularity", tier, key),) if tier is not None else ()),
                *(
                    (
                        (
                            "by_fact_sentences",
                            str(fact_counts[prompt.entity, prompt.relation_id]),
                            key,
                        ),
                    )
                    if fact_counts is not None
                    else ()
                ),
            ):
                groups.setdefault(group, []).append(hit)
        for (table, row, column), hits in groups.items():
            report[table].setdefault(row, {})[column] = _mean(hits)
    return report


def _mean(values: list[bool]) -> float:
    return sum(values) / max(1, len(values))


def filter_known_records(
    records: list[dict[str, Any]],
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split records into those whose prompt the LM completes with target_true more likely
    than target_new (it knows the fact being overwritten) and the others."""
    prompts = [
        r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"]) for r in records
    ]
    logprobs = next_token_logprobs(model, tokenizer, prompts)
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for row, record in zip(logprobs, records, strict=True):
        rewrite = record["requested_rewrite"]
        true_id = value_token_id(tokenizer, rewrite["target_true"]["str"])
        new_id = value_token_id(tokenizer, rewrite["target_new"]["str"])
        (kept if row[true_id] > row[new_id] else dropped).append(record)
    return kept, dropped


def ensure_toy_biosbias(name: str = "toy") -> Path:
    """The toy Bias in Bios export of built world ``name``, written from ``world.json`` if absent.

    The records depend only on the world (and its seed), so a world built before the export
    existed gets the same file a fresh build writes; the LM is not touched.
    """
    paths = toy_world_paths(name)
    if not paths.biosbias_file.is_file():
        world = load_world(name)
        logger.info("writing the toy Bias in Bios export %s from %s", paths.biosbias_file, name)
        io.write_json(paths.biosbias_file, export.biosbias_records(world))
    return paths.biosbias_file


def ensure_toy_mcrae(name: str = "toy") -> Path:
    """The toy McRae-format norms of built world ``name``, written from ``world.json`` if absent
    (they depend only on the world, as :func:`ensure_toy_biosbias`'s records)."""
    paths = toy_world_paths(name)
    if not paths.mcrae_file.is_file():
        world = load_world(name)
        logger.info("writing the toy McRae norms %s from %s", paths.mcrae_file, name)
        toy_mcrae.write_mcrae_norms(world, paths.mcrae_file)
    return paths.mcrae_file


def load_world(name: str = "toy") -> World:
    """The knowledge base of a built world (``world.json``)."""
    return World.from_json(io.read_json(toy_world_paths(name).world_file, "toy world file"))


def dump_report(report: dict[str, Any]) -> str:
    """The build report as indented JSON (what ``scripts/build_toy.py`` prints)."""
    return json.dumps(report, indent=2)
