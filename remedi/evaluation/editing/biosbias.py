"""Bias in Bios error correction: does the LM say a person's occupation, with and without the bio?

REMEDI's second headline experiment (the reference's ``biosbias_error_correction`` and
``scripts/eval_bias_gen.py``). Each held-out sample is asked in two settings:

- **contextual**: the bio's sentence, a blank line, then the prompt
  (``"{context}\\n\\n{prompt}"``); a hidden-state method edits the entity's *last* mention,
  the one in the prompt (the reference's ``entity_occurrence=1``; samples name the person
  once in their context, so the prompt's mention is the second);
- **decontextual**: the prompt alone; only the method can carry the occupation.

Any registered :class:`~remedi.evaluation.methods.Method` runs here: the baseline is
``unedited`` (the LM as it is), REMEDI is ``build_method("remedi", ...)``.

Scores, per setting, as the reference:

- **accuracy**: at the prompt's last position, with the method attached, the next-token
  log-probabilities of the first token of each label (every occupation of the evaluated
  samples, sorted; ``" " + label`` tokenized) are compared: top-1 accuracy is the share of
  samples whose own occupation scores highest, top-k (k = 3) the share where it is among the
  three highest. Labels sharing a first token tie (as in the reference).
- **fluency**: ROME's weighted n-gram entropy of the generated continuation alone (without the
  prompt), sampled top-k (k = 5) to 150 tokens in all, prompt included, counted as the reference
  counts them (:data:`GENERATION_LENGTH`): its ``generate(max_length=150)`` runs on left-padded
  batches of 16 consecutive samples, so the padding counts and every text of a batch gets 150
  minus the batch's longest prompt, and a text ends at end-of-text (its
  ``remedi/benchmarks.py:27,879,923-924,945-966``; batch size: its ``remedi/editors.py:39``).
  Ours is the same count over the same groups of 16 queries in order (the reference's batches
  when the samples and their order are its own, ``--split reference``), whatever batches we run.
  ``generation_length="own-prompt"`` (``--generation-length own-prompt``) counts each text's own
  prompt and samples through end-of-text, as ROME (and this suite before): longer texts, whose
  length does not depend on their neighbours. A model with fewer positions (the toy LM has 128)
  generates what fits.
- **consistency**: cosine similarity of the continuation's TF-IDF vector to the mean TF-IDF
  vector of the whole bios of the evaluated samples with the same occupation; the TF-IDF
  statistics are fitted on those bios (the reference loads a vectorizer fitted on all of Bias
  in Bios).

Results: one JSON per (method, setting) under the experiment directory, written atomically
and reused when their settings match (like :mod:`~remedi.evaluation.runner`); a summary
table (Markdown and LaTeX), a plot and ``summary.json`` beside them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dataclasses_json import DataClassJsonMixin

from remedi import errors, io, metrics, models, precompute
from remedi.evaluation.cases import (
    PADDED_BATCH,
    EvalCase,
    EvalResources,
    ResultSettings,
    result_settings,
)
from remedi.evaluation.methods import Method
from remedi.evaluation.scoring import (
    _run_grouped,
    batches,
    clean_generated_text,
    generate_texts,
)
from remedi.report import figures, tables

logger = logging.getLogger(__name__)

SETTINGS = ("contextual", "decontextual")
"""With the bio's sentence before the prompt, and without it."""
MAX_LENGTH = 150
"""Tokens generated in all, prompt included (the reference's error-correction default)."""
GENERATION_LENGTH = PADDED_BATCH
"""How :data:`MAX_LENGTH` is counted by default: as the reference (module docstring)."""
TOP_K_SAMPLING = 5
"""Top-k sampling of the generations (the reference's default, as ROME's)."""
TOP_K_LABELS = 3
"""Top-k accuracy's k (the reference's)."""
CONTEXT_SEPARATOR = "\n\n"
"""Between the bio's sentence and the prompt in the contextual setting (the reference's)."""
RELATION_ID = "P106"
"""The relation the cases carry (occupation; the toy world's id for it)."""

METHOD_LABELS = {"unedited": "Baseline"}
"""Row names in the table (the paper calls the unedited LM the baseline)."""


def biosbias_cases(samples: Sequence[Mapping[str, Any]]) -> list[EvalCase]:
    """Cases from Bias in Bios samples (:func:`remedi.data.load_biosbias` rows), numbered in order.

    A case's ``target_new`` is the occupation and its ``target_new_id`` the sample's id (results
    and the consistency references are keyed by it); there is no unmediated target (``""``).
    """
    return [
        EvalCase(
            case_id=index,
            entity=sample["entity"],
            relation_id=RELATION_ID,
            prompt=sample["prompt"],
            context=sample["context"],
            attribute=sample["attribute"],
            target_new=sample["target_mediated"],
            target_new_id=sample["id"],
            target_true="",
            target_true_id="",
        )
        for index, sample in enumerate(samples)
    ]


def setting_prompt(case: EvalCase, setting: str) -> str:
    """The prompt a case asks in ``setting`` (see :data:`SETTINGS`)."""
    if setting == "contextual":
        return case.context + CONTEXT_SEPARATOR + case.prompt
    if setting == "decontextual":
        return case.prompt
    raise errors.UsageError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")


@dataclass
class BiosbiasCase(DataClassJsonMixin):
    """One sample's predictions, generation and scores."""

    sample_id: str
    prompt: str
    generation: str
    predictions: list[str]
    logp_predictions: list[float]
    target: str
    logp_target: float
    fluency: float
    consistency: float


@dataclass
class BiosbiasResults(DataClassJsonMixin):
    """Error correction in one setting for one method."""

    benchmark: str
    setting: str
    settings: ResultSettings
    sample_ids: list[str]
    labels: list[str]
    top1_accuracy: float
    topk_accuracy: float
    k: int
    fluency: metrics.Metric
    consistency: metrics.Metric
    cases: list[BiosbiasCase]


def label_log_probs(
    mt: models.ModelAndTokenizer,
    method: Method,
    queries: Sequence[tuple[EvalCase, str]],
    label_ids: torch.Tensor,
    batch_size: int,
    desc: str = "label log-probs",
) -> np.ndarray:
    """Next-token log-probabilities of ``label_ids`` after each ``(case, prompt)``, (n, labels).

    Computed in float32 at least, with the method attached, returned as float64.
    """

    @torch.no_grad()
    def run(group: Sequence[tuple[EvalCase, str]]) -> list[np.ndarray]:
        device = models.determine_device(mt.model)
        rows: list[np.ndarray] = []
        for batch in batches(group, batch_size, desc):
            cases = [case for case, _ in batch]
            prompts = [method.rewrite(case, prompt) for case, prompt in batch]
            inputs, offsets = precompute.tokenize(
                mt.tokenizer, prompts, device, padding_side="right"
            )
            with method.edit(mt, cases, prompts, offsets, inputs.attention_mask):
                logits = mt.model(**inputs).logits
            last = precompute.last_token_positions(inputs.attention_mask)
            final = logits[torch.arange(len(prompts), device=device), last]
            log_probs = torch.log_softmax(
                final.to(torch.promote_types(final.dtype, torch.float32)), -1
            )
            rows += list(log_probs[:, label_ids.to(device)].double().cpu().numpy())
        return rows

    return np.asarray(_run_grouped(mt, method, queries, run), dtype=np.float64)


def fit_vectorizer(texts: Sequence[str]) -> metrics.TfidfVectorizer:
    """TF-IDF statistics fitted on ``texts`` (scikit-learn's defaults, smooth idf)."""
    from remedi.toy.export import tfidf_statistics

    idf, vocabulary = tfidf_statistics(texts)
    return metrics.TfidfVectorizer(vocabulary, idf)


def label_references(
    cases: Sequence[EvalCase], bios: Mapping[str, str], vectorizer: metrics.TfidfVectorizer
) -> dict[str, np.ndarray]:
    """Mean TF-IDF vector of the whole bios of the cases with each occupation."""
    texts: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        texts[case.target_new].append(bios.get(case.target_new_id, case.context))
    return {label: vectorizer.transform(group).mean(axis=0) for label, group in texts.items()}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0


def _strip_prompt(text: str, visible: str) -> str:
    shown = clean_generated_text(visible)
    return text[len(shown) :] if text.startswith(shown) else text


def error_correction(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    setting: str,
    vectorizer: metrics.TfidfVectorizer,
    references: Mapping[str, np.ndarray],
    top_k_labels: int = TOP_K_LABELS,
) -> BiosbiasResults:
    """Top-1 / top-k accuracy, fluency and consistency of ``method`` in ``setting``."""
    settings = _settings(mt, method, cases, resources, setting)
    labels = sorted({case.target_new for case in cases})
    label_ids = precompute.target_token_ids(mt.tokenizer, labels)
    queries = [(case, setting_prompt(case, setting)) for case in cases]
    scores = label_log_probs(
        mt, method, queries, label_ids, resources.batch_size, desc=f"{method.name} {setting}"
    )
    texts = generate_texts(
        mt,
        method,
        queries,
        max_length=resources.max_length,
        top_k=resources.top_k,
        seed=resources.seed,
        batch_size=resources.batch_size,
        desc=f"{method.name} {setting} generation",
        generation_length=resources.generation_length,
    )
    k = min(top_k_labels, len(labels))
    results = []
    for (case, prompt), row, text in zip(queries, scores, texts, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        generation = _strip_prompt(text, method.visible(case, prompt))
        [vector] = vectorizer.transform([generation])
        results.append(
            BiosbiasCase(
                sample_id=case.target_new_id,
                prompt=method.rewrite(case, prompt),
                generation=generation,
                predictions=[labels[index] for index in order],
                logp_predictions=[float(row[index]) for index in order],
                target=case.target_new,
                logp_target=float(row[labels.index(case.target_new)]),
                fluency=metrics.weighted_n_gram_entropy(generation),
                consistency=_cosine(vector, references[case.target_new]),
            )
        )
    top1 = float(np.mean([r.predictions[0] == r.target for r in results])) if results else 0.0
    topk = float(np.mean([r.target in r.predictions for r in results])) if results else 0.0
    logger.info("%s %s: top-1 accuracy %.3f, top-%d %.3f", method.name, setting, top1, k, topk)
    return BiosbiasResults(
        benchmark=f"biosbias_{setting}",
        setting=setting,
        settings=settings,
        sample_ids=[case.target_new_id for case in cases],
        labels=labels,
        top1_accuracy=top1,
        topk_accuracy=topk,
        k=k,
        fluency=metrics.Metric.aggregate([r.fluency for r in results]),
        consistency=metrics.Metric.aggregate([r.consistency for r in results]),
        cases=results,
    )


def _settings(
    mt: models.ModelAndTokenizer,
    method: Method,
    cases: Sequence[EvalCase],
    resources: EvalResources,
    setting: str,
) -> ResultSettings:
    settings = result_settings(mt, method, cases, resources)
    settings.prompt_source = f"biosbias-{setting}"
    return settings


def result_path(experiment_dir: Path, method: str, setting: str) -> Path:
    """``<experiment_dir>/<method>/<setting>.json``."""
    return Path(experiment_dir) / method / f"{setting}.json"


def read_biosbias_result(path: Path) -> BiosbiasResults | None:
    """The result stored at ``path``, or None if there is none or it cannot be read."""
    if not Path(path).is_file():
        return None
    try:
        return BiosbiasResults.from_dict(io.read_json(path, "Bias in Bios result"))
    except (ValueError, KeyError, TypeError, errors.FileFormatError) as error:
        logger.warning("ignoring unreadable result %s (%s); it will be recomputed", path, error)
        return None


def run_biosbias(
    mt: models.ModelAndTokenizer,
    methods: Sequence[Method],
    cases: Sequence[EvalCase],
    bios: Mapping[str, str],
    resources: EvalResources,
    experiment_dir: Path,
    settings: Sequence[str] = SETTINGS,
    rerun: bool = False,
) -> dict[str, dict[str, BiosbiasResults]]:
    """Run every method in every setting, one result file each, reusing finished ones.

    A stored result is reused when its settings (method and its configuration, model, cases,
    seed, generation settings) and sample ids match, unless ``rerun``; one computed otherwise
    is an error (as :func:`remedi.evaluation.run_benchmarks`). ``bios`` are the samples' whole
    bios by sample id (consistency's references). Returns ``{method: {setting: result}}``.
    """
    unknown = [setting for setting in settings if setting not in SETTINGS]
    if unknown:
        raise errors.UsageError(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    if not cases:
        raise errors.UsageError("no Bias in Bios samples to evaluate")
    vectorizer = fit_vectorizer([bios.get(case.target_new_id, case.context) for case in cases])
    references = label_references(cases, bios, vectorizer)
    sample_ids = [case.target_new_id for case in cases]
    results: dict[str, dict[str, BiosbiasResults]] = {}
    for method in methods:
        results[method.name] = {}
        for setting in settings:
            path = result_path(experiment_dir, method.name, setting)
            expected = _settings(mt, method, cases, resources, setting)
            existing = None if rerun else read_biosbias_result(path)
            if existing is not None:
                if existing.settings == expected and existing.sample_ids == sample_ids:
                    logger.info("%s %s: found complete result at %s", method.name, setting, path)
                    results[method.name][setting] = existing
                    continue
                raise errors.MismatchError(
                    f"{path} holds a result computed with other settings or samples; pass "
                    "--rerun to replace it, or evaluate under another experiment name (-n)"
                )
            logger.info("running %s %s on %d samples", method.name, setting, len(cases))
            result = error_correction(mt, method, cases, resources, setting, vectorizer, references)
            io.write_json(path, result.to_dict())
            results[method.name][setting] = result
    return results


# ---------------------------------------------------------------------------------------------
# The summary: table and plot.

_COLUMNS = (
    ("top1_accuracy", "Top-1 acc."),
    ("topk_accuracy", "Top-3 acc."),
    ("fluency", "Fluency"),
    ("consistency", "Consistency"),
)


def method_row_label(name: str, method_label: str) -> str:
    """The table's name for a method: "Baseline" for the unedited LM, else its label."""
    return METHOD_LABELS.get(name, method_label)


def summary_rows(
    results: Mapping[str, Mapping[str, BiosbiasResults]], labels: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One row per method: its label, N, and each setting's scores (accuracies in %)."""
    rows = []
    for name, by_setting in results.items():
        row: dict[str, Any] = {"method": name, "label": labels.get(name, name)}
        for setting, result in by_setting.items():
            row["n"] = len(result.cases)
            row[setting] = {
                "top1_accuracy": 100 * result.top1_accuracy,
                "topk_accuracy": 100 * result.topk_accuracy,
                "k": result.k,
                "fluency": result.fluency.mean,
                "consistency": result.consistency.mean,
            }
        rows.append(row)
    return rows


def _cell(row: Mapping[str, Any], setting: str, key: str) -> str:
    values = row.get(setting)
    if not values:
        return "-"
    value = values[key]
    return f"{value:.1f}" if "accuracy" in key else f"{value:.2f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], settings: Sequence[str] = SETTINGS) -> str:
    """The summary as a Markdown table: per setting, accuracies (%), fluency, consistency."""
    header = ["Method", "N"] + [
        f"{s.capitalize()} {label}" for s in settings for _, label in _COLUMNS
    ]
    cells = (
        [str(row["label"]), str(row.get("n", "-"))]
        + [_cell(row, s, key) for s in settings for key, _ in _COLUMNS]
        for row in rows
    )
    return "\n".join(tables.markdown_grid(header, cells)) + "\n"


def latex_table(rows: Sequence[Mapping[str, Any]], settings: Sequence[str] = SETTINGS) -> str:
    """The summary as a LaTeX tabular with a header row per setting."""
    width = len(_COLUMNS)
    groups = [" ", " "] + [
        f"\\multicolumn{{{width}}}{{c}}{{{tables.latex_escape(s.capitalize())}}}" for s in settings
    ]
    lines = tables.latex_tabular(
        ["Method", "N"] + [label for _ in settings for _, label in _COLUMNS],
        (
            [tables.latex_escape(str(row["label"])), str(row.get("n", "-"))]
            + [_cell(row, s, key) for s in settings for key, _ in _COLUMNS]
            for row in rows
        ),
        column_spec="lr" + ("|" + "r" * width) * len(settings),
        above_headers=[groups],
    )
    return "\n".join(lines) + "\n"


def plot_summary(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Bar charts of top-1 accuracy and fluency per setting and method, saved as PNG."""
    figure, axes = figures.pyplot().subplots(1, 2, figsize=(9, 3.5))
    width = 0.8 / max(1, len(rows))
    positions = np.arange(len(SETTINGS))
    for index, row in enumerate(rows):
        for axis, key in zip(axes, ("top1_accuracy", "fluency"), strict=True):
            values = [row.get(s, {}).get(key, np.nan) for s in SETTINGS]
            axis.bar(
                positions + index * width,
                values,
                width,
                label=row["label"],
                color=figures.color(index),
            )
    for axis, name in zip(axes, ("Top-1 accuracy (%)", "Fluency"), strict=True):
        axis.set_xticks(positions + width * (len(rows) - 1) / 2, [s.capitalize() for s in SETTINGS])
        axis.set_title(name)
    axes[0].set_ylim(0, 100)
    axes[0].legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figures.save(figure, path)


def write_summary(
    results: Mapping[str, Mapping[str, BiosbiasResults]],
    labels: Mapping[str, str],
    directory: Path,
    title: str = "",
    notes: Sequence[str] = (),
) -> tuple[str, tables.TableFiles]:
    """Write ``summary.{md,tex,png,json}`` under ``directory`` (``notes``, e.g. which samples,
    after the table); return the Markdown table."""
    directory = Path(directory)
    rows = summary_rows(results, labels)
    table = markdown_table(rows)
    note = (
        "\nTop-1/top-3 accuracy (%): the occupation's first token ranks first / in the top 3 "
        "among the labels' first tokens at the prompt's last position. Fluency: weighted n-gram "
        "entropy of the sampled continuation. Consistency: TF-IDF cosine to the mean of the "
        "bios with that occupation.\n"
    )
    note += "".join(f"\n{line}\n" for line in notes)
    files = tables.write_files(
        directory,
        "summary",
        (f"# {title}\n\n" if title else "") + table + note,
        latex_table(rows),
        {"title": title, "rows": rows, "notes": list(notes)},
        lambda path: plot_summary(rows, path, title),
    )
    return table, files
