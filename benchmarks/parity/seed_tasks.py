"""Gu et al.'s general-task scores under the seed protocol: ours
(:func:`remedi.evaluation.general.abilities.evaluate_task`, ``protocol="seed"``) against the
before-edit scripts of JasonForJoy/Model-Editing-Hurt (``test-task-code/test-<Task>.py``), on the
same model and the first ``count`` items of each of the eight task files.

The reference's scripts are top-level programs: each reads ``./data/task-data/<file>``, loads
``./hugging_cache/gpt2-xl``, generates one prompt at a time on ``'cuda'`` and appends every
item's gold answer and parsed prediction, then the task's counts and score, to
``./test-result/test-<Task>/result-<Task>-before-edit.txt``. Each runs here in its own process
(``--hurt-python``: a Python with our torch and transformers plus the scripts' ``jsonlines`` and
``rouge``) in a temporary folder laid out that way, whose ``data/task-data`` holds the first
``count`` items of the real file copied verbatim (:func:`write_first_items`; for CoNLL-2003 the
first ``count`` blank-line-ended blocks, ``-DOCSTART-`` blocks included, as the script counts
them). Its source is read from the checkout and changed in memory by counted text replacements
(a checkout where a count differs is refused); none can change a prediction:

- ``GPT2Tokenizer`` and ``GPT2LMHeadModel`` are imported as ``AutoTokenizer`` and
  ``AutoModelForCausalLM`` under those names, and ``'./hugging_cache/gpt2-xl'`` is the model
  under test: the script then loads the model and tokenizer we load, in the dtype they were
  saved in (SmolLM2's: float32, which ours loads too; our GELU fusion touches no Llama);
- ``'cuda'`` is ``'cpu'``;
- the tokenizer's ``model_max_length`` is set to :data:`PAD_TO` right after its
  ``padding_side='left'``: the scripts pad every prompt to the tokenizer's maximum length, which
  SmolLM2's tokenizer gives as 1e30 (no limit). The pad tokens are masked and ``generate``
  counts positions from the attention mask, so they carry no weight and move no position; a
  prompt longer than :data:`PAD_TO` is not padded (padding never truncates);
- the file sizes the scripts hard-code (2,489 RTE, 872 SST-2, 3,267 BoolQ, 3,610 NQ, 1,319 GSM8K,
  886 MuTual, 818 SAMSum items: divisors, an "every item unanswered" check, and MuTual's and
  SAMSum's loops over the whole file) are ``count``; a score's divisor, never a prediction;
- the parsed prediction (and SAMSum's reference summary) is written with ``repr`` instead of
  ``str``: the same text, escaped, so that a generated newline cannot break an item's line in the
  result file that this module reads back.

Ours runs on the same model (loaded once, batches of :data:`BATCH_SIZE`, left-padded to the
batch's longest prompt) on the same items read by our loaders from the same folder, and records
every generation; :func:`remedi.evaluation.general.abilities.seed_answer` gives the text each
item is judged on. The comparison per task: the share of items whose judged text differs from
the one the script wrote (NQ: ours normalised as the script writes it, and the script's without
the decoded left padding that it judges too, its prompt having no ``Answer:`` marker), and the
difference of the task scores. Where our score differs from the
seed's on purpose (documented in ``abilities.py`` and the README's "Where we differ"), the score
is its own row, marked so: NER (our entity spans are the BIO spans, and ``-DOCSTART-`` is no
sentence), open-domain QA (an item counts once) and SAMSum (``rouge-score`` for the ``rouge``
package).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.parity import reference
from benchmarks.parity.setup import Comparison
from remedi import models
from remedi.data import general_tasks
from remedi.evaluation.general import abilities

logger = logging.getLogger(__name__)

DEFAULT_COUNT = 20
"""Items per task (NER: CoNLL-2003 blocks, four generations each)."""
PAD_TO = 512
"""The reference's left-padded prompt length (its tokenizer's ``model_max_length``)."""
BATCH_SIZE = 8
RESULT_SEPARATOR = "*" * 67
"""The line that opens each sentence's block in the NER script's result file."""
NER_PREDICTION_LABELS = ("person", "location", "organization", "miscellaneous")
"""The labels of the NER script's four prediction lines, in our type order (PER .. MISC)."""


@dataclass(frozen=True)
class SeedScript:
    """One before-edit script: its file, its result file, and its hard-coded file size."""

    task: str
    """Our task name (a key of :data:`remedi.data.general_tasks.TASK_LOADERS`)."""
    script: str
    """The script, relative to the checkout."""
    result: str
    """Its result file, relative to its working folder."""
    sizes: tuple[tuple[str, str, int], ...] = ()
    """``(text, text with {count} / {count_plus_one}, occurrences)`` of the hard-coded size."""
    score_by_design: str = ""
    """Why our score differs from the script's here (empty: meant to agree)."""


SCRIPTS = (
    SeedScript(
        "reasoning",
        "test-task-code/test-reasoning.py",
        "test-result/test-reasoning/result-reasoning-before-edit.txt",
        (("correct / 1319", "correct / {count}", 1),),
    ),
    SeedScript(
        "nli",
        "test-task-code/test-NLI.py",
        "test-result/test-NLI/result-NLI-before-edit.txt",
        (("others == 2489", "others == {count}", 1),),
    ),
    SeedScript(
        "open_qa",
        "test-task-code/test-OpenDomainQA.py",
        "test-result/test-OpenDomainQA/result-OpenDomainQA-before-edit.txt",
        (("exact_match_count/3610", "exact_match_count/{count}", 1),),
        score_by_design="the script's inner `continue` can count an item several times and its "
        "`flag`, never reset, limits every later item to spans from its first word "
        "(test-OpenDomainQA.py:62-77), and its first word is the prompt's glued to the decoded "
        "left padding (no Answer: marker: it judges the whole sequence), so no span from it "
        "matches; ours counts an item once if any span of the unpadded text matches",
    ),
    SeedScript(
        "closed_qa",
        "test-task-code/test-ClosedDomainQA.py",
        "test-result/test-ClosedDomainQA/result-ClosedDomainQA-before-edit.txt",
        (("others == 3267", "others == {count}", 1),),
    ),
    SeedScript(
        "dialogue",
        "test-task-code/test-dialogue.py",
        "test-result/test-dialogue/result-dialogue-before-edit.txt",
        (
            ("range(1,887)", "range(1,{count_plus_one})", 1),
            ("other == 886", "other == {count}", 1),
            ("correct / 886", "correct / {count}", 1),
        ),
    ),
    SeedScript(
        "summarization",
        "test-task-code/test-summarization.py",
        "test-result/test-summarization/result-summarization-before-edit.txt",
        (("range(818)", "range({count})", 2), ("/ 818)", "/ {count})", 2)),
        score_by_design="ROUGE-1/2/L F from rouge-score where the script uses the rouge package "
        "(test-summarization.py:56-58)",
    ),
    SeedScript(
        "ner",
        "test-task-code/test-NER.py",
        "test-result/test-NER/result-NER-before-edit.txt",
        score_by_design="ours reads BIO spans where the script reads from B-X to the next O "
        "(test-NER.py:52-111), and skips -DOCSTART- blocks, which the script scores as "
        "sentences without entities (test-NER.py:14-23)",
    ),
    SeedScript(
        "sentiment",
        "test-task-code/test-SentimentAnalysis.py",
        "test-result/test-SentimentAnalysis/result-SentimentAnalysis-before-edit.txt",
        (("others == 872", "others == {count}", 1),),
    ),
)


def script_patches(script: SeedScript, model_dir: Path, count: int) -> list[reference.Patch]:
    """The run-time replacements of ``script``'s source (see the module docstring)."""
    generations = 4 if script.task == "ner" else 1
    patches = [
        reference.Patch(
            "from transformers import GPT2Tokenizer",
            "from transformers import AutoTokenizer as GPT2Tokenizer",
            1,
            "GPT2Tokenizer -> AutoTokenizer (the model under test's tokenizer)",
        ),
        reference.Patch(
            "from transformers import GPT2LMHeadModel",
            "from transformers import AutoModelForCausalLM as GPT2LMHeadModel",
            1,
            "GPT2LMHeadModel -> AutoModelForCausalLM (the model under test's class)",
        ),
        reference.Patch(
            "'./hugging_cache/gpt2-xl'",
            repr(str(model_dir)),
            2,
            "./hugging_cache/gpt2-xl -> the model under test",
        ),
        reference.Patch("'cuda'", "'cpu'", 1 + 2 * generations, "hard-coded device cuda -> cpu"),
        reference.Patch(
            "tokenizer.padding_side='left'",
            f"tokenizer.padding_side='left'; tokenizer.model_max_length = {PAD_TO}",
            1,
            f"pad to {PAD_TO} tokens (masked), not to the tokenizer's unlimited maximum",
        ),
    ]
    for old, new, occurrences in script.sizes:
        patches.append(
            reference.Patch(
                old,
                new.format(count=count, count_plus_one=count + 1),
                occurrences,
                f"the full file's size in {old!r} -> the {count} items given",
            )
        )
    if script.task == "ner":
        patches.append(
            reference.Patch(
                'predict:" + predict + "\\n"',
                'predict:" + repr(predict) + "\\n"',
                4,
                "write the prediction with repr (one line per prediction)",
            )
        )
    else:
        patches.append(
            reference.Patch(
                "str(predict)",
                "repr(predict)",
                1,
                "write the prediction with repr (one line per item)",
            )
        )
    if script.task == "summarization":
        patches.append(
            reference.Patch(
                "str(summary[i])",
                "repr(summary[i])",
                1,
                "write the reference summary with repr (one line per item)",
            )
        )
    return patches


def write_first_items(task: str, task_dir: Path, destination: Path, count: int) -> None:
    """Copy the first ``count`` items of ``task``'s file in ``task_dir`` (the harms paper's
    ``task-data``) to ``destination``, in the file's own format: for the TSVs the header and
    the first ``count`` lines as they are, for JSON lines the first ``count`` records' lines,
    SAMSum's first ``count`` records, MuTual's ``dev_1`` .. ``dev_<count>``, and CoNLL-2003's
    lines up to its ``count``-th blank line (each blank line ends one of the seed's items)."""
    name = general_tasks.TASK_FILES[task]
    source, target = Path(task_dir) / name, Path(destination) / name
    if not source.exists():
        raise FileNotFoundError(
            f"task file not found: {source} (the harms paper's task-data; see "
            "shared/data/README.md)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if task == "dialogue":
        target.mkdir(exist_ok=True)
        for number in range(1, count + 1):
            shutil.copyfile(source / f"dev_{number}.txt", target / f"dev_{number}.txt")
        return
    if task == "summarization":
        records = json.loads(source.read_text(encoding="utf-8"))
        target.write_text(json.dumps(records[:count]), encoding="utf-8")
        return
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    if task in ("nli", "sentiment"):
        kept = lines[: count + 1]
    elif task == "ner":
        blank_lines = [index for index, line in enumerate(lines) if not line.strip()]
        kept = lines[: blank_lines[count - 1] + 1] if len(blank_lines) >= count else lines
    else:
        kept = [line for line in lines if line.strip()][:count]
    target.write_text("".join(kept), encoding="utf-8")


@dataclass
class SeedResult:
    """What a before-edit script wrote: the judged text of each item (NER: of each of the four
    questions per sentence, ``-DOCSTART-`` blocks left out) and its score."""

    answers: list[str]
    score: float
    """The script's headline number; 0 where it wrote ``error`` (no item answered)."""
    details: dict[str, float] = field(default_factory=dict)
    skipped_items: int = 0
    """Items the script scored that our loader has not (CoNLL-2003's ``-DOCSTART-`` blocks)."""


def _literal(text: str) -> str:
    value = ast.literal_eval(text)
    if not isinstance(value, str):
        raise ValueError(f"expected a written string, found {text!r}")
    return value


def read_seed_result(task: str, text: str) -> SeedResult:
    """Parse the result file of ``task``'s before-edit script, as patched here (predictions
    written with ``repr``)."""
    lines = text.splitlines()
    *item_lines, last = [line for line in lines if line.strip()]
    if task == "ner":
        answers: list[str] = []
        skipped = 0
        for block in text.split(RESULT_SEPARATOR + "\n")[1:]:
            block_lines = block.splitlines()
            predictions = {
                label: _literal(line.split(" predict:", 1)[1])
                for line in block_lines
                for label in NER_PREDICTION_LABELS
                if line.startswith(f"{label} predict:")
            }
            if block_lines[0].strip() == "-DOCSTART-":
                skipped += 1
                continue
            answers.extend(predictions[label] for label in NER_PREDICTION_LABELS)
        per_type = [float(line) for line in item_lines[-4:]]
        details = dict(zip(general_tasks.NER_TYPES, per_type, strict=True))
        return SeedResult(answers, float(last), details, skipped)
    if task == "reasoning":
        prefix = "The model predict is:"
        answers = [_literal(line[len(prefix) :]) for line in item_lines if line.startswith(prefix)]
        return SeedResult(answers, float(last))
    if task == "open_qa":
        marker = "\tThe model predict is: "
        answers = [_literal(line.split(marker, 1)[1]) for line in item_lines if marker in line]
        return SeedResult(answers, float(last.split("\t")[0]))
    if task == "summarization":
        answers = [_literal(line.split("\t")[1]) for line in item_lines]
        bleu, rouge = (float(value) for value in last.split("\t"))
        return SeedResult(answers, rouge, {"bleu": bleu})
    # Two-option tasks and MuTual: "gold<TAB>prediction" per item, then the counts and score.
    if last.strip() == "error":
        answer_lines, score, details = item_lines, 0.0, {"error": 1.0}
    elif task == "dialogue":
        answer_lines = item_lines
        correct, other, accuracy = last.split("\t")
        details = {"correct_count": float(correct), "unanswered_count": float(other)}
        score = float(accuracy)
    else:
        answer_lines = item_lines[:-1]
        accuracy, total_accuracy = last.split("\t")
        score, details = float(accuracy), {"accuracy_all_items": float(total_accuracy)}
    answers = [_literal(line.split("\t", 1)[1]) for line in answer_lines]
    return SeedResult(answers, score, details)


def run_seed_script(
    hurt_dir: Path,
    script: SeedScript,
    task_dir: Path,
    model_dir: Path,
    count: int,
    python: Path,
    work_dir: Path,
) -> SeedResult:
    """Run ``script`` (patched in memory) on the first ``count`` items in ``work_dir``."""
    write_first_items(script.task, task_dir, work_dir / "data" / "task-data", count)
    result_file = work_dir / script.result
    result_file.parent.mkdir(parents=True, exist_ok=True)
    source = reference.patched_source(
        hurt_dir / script.script, script_patches(script, model_dir, count)
    )
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    completed = subprocess.run(
        [str(python), "-"],
        input=source,
        text=True,
        cwd=work_dir,
        env=environment,
        capture_output=True,
        check=False,
    )
    logger.debug("%s printed:\n%s%s", script.script, completed.stdout, completed.stderr)
    if completed.returncode != 0:
        raise reference.ReferenceCheckoutError(
            f"{script.script} failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
        )
    return read_seed_result(script.task, result_file.read_text(encoding="utf-8"))


class RecordingScorer(abilities.Scorer):
    """Our scorer, keeping every prompt and greedy continuation it generated, in order."""

    def __init__(self, mt: models.ModelAndTokenizer, batch_size: int = BATCH_SIZE):
        super().__init__(mt, batch_size=batch_size)
        self.generated: list[tuple[str, str]] = []

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        outputs = super().generate(prompts, max_new_tokens)
        self.generated.extend(zip(prompts, outputs, strict=True))
        return outputs


def without_padding(text: str, pad_text: str) -> str:
    """``text`` without the leading repeats of ``pad_text``."""
    while pad_text and text.startswith(pad_text):
        text = text[len(pad_text) :]
    return text


def answer_mismatches(
    task: str, ours: Sequence[str], theirs: Sequence[str], pad_text: str = ""
) -> list[int]:
    """Indices where our judged text differs from the script's; every index if the counts
    differ.

    Open-domain QA: ours after the script's normalisation (what it writes), and the script's
    without its leading ``pad_text`` (the normalised decoded pad token): its prompt has no
    ``Answer:`` marker, so the script judges the whole decoded sequence, left padding included,
    which normalisation glues onto the prompt's first word; ours judges the prompt unpadded.
    """
    if task == "open_qa":
        ours = [abilities.normalize_answer(answer) for answer in ours]
        theirs = [without_padding(answer, pad_text) for answer in theirs]
    if len(ours) != len(theirs):
        return list(range(max(len(ours), len(theirs))))
    return [index for index, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]


def compare_seed_tasks(
    hurt_dir: Path,
    task_dir: Path,
    model_dir: Path,
    python: Path,
    count: int = DEFAULT_COUNT,
    tasks: Sequence[str] | None = None,
) -> list[Comparison]:
    """One row per task (answers and score); where our score differs by design, a second row
    for the score alone."""
    mt = models.load_model(str(model_dir))
    pad_id = mt.tokenizer.eos_token_id  # the scripts pad with the EOS token
    rows: list[Comparison] = []
    for script in SCRIPTS:
        if tasks is not None and script.task not in tasks:
            continue
        patches = script_patches(script, model_dir, count)
        with tempfile.TemporaryDirectory(prefix=f"seed-{script.task}-") as work:
            logger.info("running %s on %d items", script.script, count)
            theirs = run_seed_script(
                hurt_dir, script, task_dir, model_dir, count, python, Path(work)
            )
            items = general_tasks.load_task(script.task, Path(work) / "data" / "task-data")
        scorer = RecordingScorer(mt)
        ours = abilities.evaluate_task(scorer, script.task, items, "seed")
        our_answers = [
            abilities.seed_answer(script.task, prompt, output)
            for prompt, output in scorer.generated
        ]
        pad_text = abilities.normalize_answer(str(mt.tokenizer.decode([pad_id])))
        mismatches = answer_mismatches(script.task, our_answers, theirs.answers, pad_text)
        for index in mismatches[:5]:
            logger.warning(
                "%s item %d: ours %r, the script's %r",
                script.task,
                index,
                our_answers[index] if index < len(our_answers) else None,
                theirs.answers[index] if index < len(theirs.answers) else None,
            )
        mismatch_share = len(mismatches) / max(len(our_answers), len(theirs.answers), 1)
        score_difference = abs(ours.score - theirs.score)
        inputs = (
            f"{model_dir.name}, float32; the first {count} items of {general_tasks.TASK_FILES[script.task]}"
            f" ({len(items)} ours, {len(theirs.answers)} judged answers"
            + (
                f", {theirs.skipped_items} -DOCSTART- blocks the script also scores"
                if theirs.skipped_items
                else ""
            )
            + f"); ours {ours.metric} {ours.score:.4g}, the script's {theirs.score:.4g}"
        )
        name = f"{script.script} (JasonForJoy/Model-Editing-Hurt)"
        meant_to_agree = (
            [mismatch_share] if script.score_by_design else [mismatch_share, score_difference]
        )
        rows.append(
            Comparison(
                name=f"Seed protocol, {script.task}",
                reference=name,
                inputs=inputs,
                quantity="share of judged answers that differ"
                + ("" if script.score_by_design else "; |score difference|"),
                tolerance=0.0,
                max_relative_difference=max(meant_to_agree),
                differences=meant_to_agree,
                patches=reference.patch_summary({script.script: patches}),
            )
        )
        if script.score_by_design:
            rows.append(
                Comparison(
                    name=f"Seed protocol, {script.task} score as we count it",
                    reference=name,
                    inputs=inputs,
                    quantity="|score difference|",
                    tolerance=0.0,
                    max_relative_difference=score_difference,
                    differences=[score_difference],
                    by_design=script.score_by_design,
                )
            )
    return rows
