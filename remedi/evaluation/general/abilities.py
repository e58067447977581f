"""General abilities of a (possibly edited) LM on the harms paper's eight task sets.

Two scoring protocols, named in every :class:`TaskScore`:

- ``seed``: the seed repository's (JasonForJoy/Model-Editing-Hurt, ``test-task-code/``):
  its prompts, greedy generation of its number of new tokens, its answer parsing on the decoded
  prompt + continuation (the seed decodes the whole sequence, then splits on a marker), and
  its metric. Its bookkeeping bugs are fixed and noted where they change a number:

  * every task divides by the number of items scored (the seed hard-codes file sizes);
  * open-domain QA counts an item once (the seed's inner ``continue`` can count an item several
    times, and a ``flag`` never reset after the first multi-word match makes every later item
    check only spans starting at the first word). As in the seed, the parsed text is the whole
    decoded sequence (the prompt has no ``Answer:`` marker), so a gold answer inside the passage
    counts: the seed's number measures that too;
  * NER: entities are the BIO spans (the seed's span reader runs from ``B-X`` to the next ``O``
    and drops a span's last word when the sentence ends in it). Where a sentence has no gold
    entity of the asked type, a non-empty prediction counts one miss for MISC only, as in the
    seed (issue 21); an empty one counts one hit for every type;
  * summarization uses ``rouge-score`` (ROUGE-1/2/L F, no stemming) where the seed used the
    ``rouge`` package (its ROUGE-L differs slightly); the seed's BLEU is not computed.
- ``loglik``: lm-evaluation-harness style, on the same prompts: choose among the options by the
  summed log-likelihood of each option's tokens (NLI True/False, BoolQ yes/no, SST-2
  positive/negative, MuTual's four responses after the dialogue, NER one of five types per
  word, scored as entity F1 with ``seqeval``); for GSM8K and NQ, whether the gold answer is the
  greedy continuation (``is_greedy``); for SAMSum, the mean per-token log-likelihood of the
  reference summary. Far less noisy than parsing a small model's generations.

Everything is batched and the model is loaded once; an :data:`Intervention` (e.g. REMEDI's
directions) wraps every forward pass.
"""

from __future__ import annotations

import contextlib
import logging
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from dataclasses_json import DataClassJsonMixin

from remedi import errors, models
from remedi.data import general_tasks as tasks

logger = logging.getLogger(__name__)

PROTOCOLS = ("seed", "loglik")
DEFAULT_BATCH_SIZE = 8

Intervention = Callable[
    [Sequence[str], torch.Tensor, torch.Tensor], contextlib.AbstractContextManager[None]
]
"""``(texts, offset_mapping (batch, seq, 2), attention_mask)`` -> a context manager active
around the forward passes (or generation) over those texts' padded tokens."""


@dataclass
class TaskScore(DataClassJsonMixin):
    """One task's score under one protocol; ``details`` holds the protocol's other numbers."""

    task: str
    protocol: str
    metric: str
    score: float
    count: int
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class Continuations:
    """Summed log-probability, token count and greedy-ness of continuations after contexts."""

    log_prob: list[float]
    num_tokens: list[int]
    is_greedy: list[bool]


def _max_positions(mt: models.ModelAndTokenizer) -> int:
    config = mt.model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _no_intervention(
    texts: Sequence[str], offsets: torch.Tensor, attention_mask: torch.Tensor
) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class Scorer:
    """Batched greedy generation and continuation scoring on one model (loaded once)."""

    def __init__(
        self,
        mt: models.ModelAndTokenizer,
        batch_size: int = DEFAULT_BATCH_SIZE,
        intervention: Intervention | None = None,
    ):
        self.mt = mt
        self.batch_size = batch_size
        self.intervention = intervention or _no_intervention
        tokenizer = mt.tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.max_positions = _max_positions(mt)

    def _encode(self, text: str, keep: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets of ``text``, its last ``keep`` tokens at most (the
        seed pads to the model's maximum length; longer prompts lose their beginning here)."""
        encoded = self.mt.tokenizer(text, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])[-keep:]
        offsets = [(int(start), int(end)) for start, end in encoded["offset_mapping"]][-keep:]
        return ids, offsets

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts``, each decoded up to and including its first EOS
        (as the seed, which generates one prompt at a time, sees it)."""
        keep = self.max_positions - max_new_tokens
        results: list[str] = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
        device = self.mt.device
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            encoded = [self._encode(prompts[index], keep) for index in rows]
            length = max(len(ids) for ids, _ in encoded)
            input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
            offsets = torch.zeros((len(rows), length, 2), dtype=torch.long)
            for row, (ids, row_offsets) in enumerate(encoded):
                input_ids[row, length - len(ids) :] = torch.tensor(ids)
                attention_mask[row, length - len(ids) :] = 1
                offsets[row, length - len(ids) :] = torch.tensor(row_offsets)
            texts = [prompts[index] for index in rows]
            generate: Any = self.mt.model.generate
            with torch.no_grad(), self.intervention(texts, offsets, attention_mask):
                output = generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.pad_id,
                    eos_token_id=self.eos_id,
                )
            for row, index in enumerate(rows):
                new_tokens = output[row, length:].tolist()
                if self.eos_id in new_tokens:
                    new_tokens = new_tokens[: new_tokens.index(self.eos_id) + 1]
                results[index] = str(
                    self.mt.tokenizer.decode(new_tokens, skip_special_tokens=False)
                )
        return results

    def continuations(self, contexts: Sequence[str], continuations: Sequence[str]) -> Continuations:
        """Log-probability of each ``continuations[i]`` (tokenized on its own, so it should
        start with a space) after ``contexts[i]``; contexts lose their beginning if too long."""
        tokenizer = self.mt.tokenizer
        count = len(contexts)
        log_probs = [0.0] * count
        num_tokens = [0] * count
        greedy = [False] * count
        pieces = []
        for context, continuation in zip(contexts, continuations, strict=True):
            cont = tokenizer(continuation, return_offsets_mapping=True, add_special_tokens=False)
            cont_ids = list(cont["input_ids"])[: self.max_positions - 1]
            ctx_ids, ctx_offsets = self._encode(context, self.max_positions - len(cont_ids))
            shift = len(context)
            cont_offsets = [(a + shift, b + shift) for a, b in cont["offset_mapping"]]
            pieces.append((ctx_ids, cont_ids, ctx_offsets + cont_offsets[: len(cont_ids)]))
        order = sorted(range(count), key=lambda index: -len(pieces[index][0] + pieces[index][1]))
        device = self.mt.device
        for start in range(0, count, self.batch_size):
            rows = order[start : start + self.batch_size]
            length = max(len(pieces[i][0]) + len(pieces[i][1]) for i in rows)
            input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
            offsets = torch.zeros((len(rows), length, 2), dtype=torch.long)
            predicts = torch.zeros((len(rows), length), dtype=torch.bool)
            targets = []
            for row, index in enumerate(rows):
                ctx_ids, cont_ids, row_offsets = pieces[index]
                ids = ctx_ids + cont_ids
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
                offsets[row, : len(ids)] = torch.tensor(row_offsets, dtype=torch.long)
                predicts[row, len(ctx_ids) - 1 : len(ids) - 1] = True
                targets.extend(cont_ids)
            texts = [contexts[i] + continuations[i] for i in rows]
            inputs = {
                "input_ids": input_ids.to(device),
                "attention_mask": attention_mask.to(device),
            }
            with torch.no_grad(), self.intervention(texts, offsets, attention_mask):
                logits = models.logits_at(self.mt.model, inputs, predicts)
            token_log_probs = torch.log_softmax(logits.float(), dim=-1)
            target_tensor = torch.tensor(targets, device=token_log_probs.device)
            picked = token_log_probs.gather(-1, target_tensor.unsqueeze(-1)).squeeze(-1)
            hits = token_log_probs.argmax(-1).eq(target_tensor)
            position = 0
            for index in rows:
                size = len(pieces[index][1])
                log_probs[index] = float(picked[position : position + size].sum())
                greedy[index] = bool(hits[position : position + size].all())
                num_tokens[index] = size
                position += size
        return Continuations(log_probs, num_tokens, greedy)

    def token_accuracy(self, prompts: Sequence[str], targets: Sequence[str]) -> list[float]:
        """EasyEdit's teacher-forced token accuracy of each ``targets[i]`` after ``prompts[i]``:
        the share of target tokens that are the argmax after the tokens before them.

        As EasyEdit's ``test_prediction_acc`` (JasonForJoy/Model-Editing-Hurt,
        ``easyeditor/evaluate/evaluate_utils.py:80-123``, called by ``evaluate.py:86-115`` for
        the rewrite and rephrase prompts): the text is ``prompt + " " + target`` tokenized as a
        whole, with the tokenizer's special tokens (line 83-91); its first ``n`` tokens count as
        the prompt, ``n`` the length of the prompt tokenized alone (line 92-101), so a token
        that straddles the boundary counts as the prompt's; the rest are the target's, each
        compared with the argmax of the logits one position earlier (``slice_list``, line
        279-289). NaN where the target has no token of its own (EasyEdit's mean of nothing).
        One row at a time there, batched (right-padded) here; texts longer than the model
        lose their beginning, as :meth:`continuations`.
        """
        tokenizer = self.mt.tokenizer
        pieces = []
        for prompt, target in zip(prompts, targets, strict=True):
            text = f"{prompt} {target.strip()}"
            encoded = tokenizer(text, return_offsets_mapping=True)
            ids = list(encoded["input_ids"])
            spans = [(int(start), int(end)) for start, end in encoded["offset_mapping"]]
            prompt_length = len(tokenizer(prompt)["input_ids"])
            dropped = max(0, len(ids) - self.max_positions)
            pieces.append((text, ids[dropped:], spans[dropped:], max(prompt_length - dropped, 1)))
        accuracy = [float("nan")] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda index: -len(pieces[index][1]))
        device = self.mt.device
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows = [i for i in chunk if pieces[i][3] < len(pieces[i][1])]
            if not rows:
                continue
            length = max(len(pieces[i][1]) for i in rows)
            input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
            offsets = torch.zeros((len(rows), length, 2), dtype=torch.long)
            predicts = torch.zeros((len(rows), length), dtype=torch.bool)
            labels: list[int] = []
            for row, index in enumerate(rows):
                _, ids, row_offsets, prompt_length = pieces[index]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
                offsets[row, : len(ids)] = torch.tensor(row_offsets, dtype=torch.long)
                predicts[row, prompt_length - 1 : len(ids) - 1] = True
                labels.extend(ids[prompt_length:])
            inputs = {
                "input_ids": input_ids.to(device),
                "attention_mask": attention_mask.to(device),
            }
            texts = [pieces[i][0] for i in rows]
            with torch.no_grad(), self.intervention(texts, offsets, attention_mask):
                logits = models.logits_at(self.mt.model, inputs, predicts)
            hits = logits.argmax(-1).cpu().eq(torch.tensor(labels)).tolist()
            position = 0
            for index in rows:
                size = len(pieces[index][1]) - pieces[index][3]
                accuracy[index] = sum(hits[position : position + size]) / size
                position += size
        return accuracy

    def choose(self, contexts: Sequence[str], options: Sequence[Sequence[str]]) -> list[int]:
        """Index of the most likely option after each context (summed log-likelihood)."""
        flat_contexts = [c for c, opts in zip(contexts, options, strict=True) for _ in opts]
        flat_options = [option for opts in options for option in opts]
        scores = self.continuations(flat_contexts, flat_options).log_prob
        chosen, position = [], 0
        for opts in options:
            block = scores[position : position + len(opts)]
            chosen.append(max(range(len(opts)), key=block.__getitem__))
            position += len(opts)
        return chosen


# ---------------------------------------------------------------------------------------------
# The seed's prompts and parsing.


def reasoning_prompt(item: tasks.ReasoningItem) -> str:
    return (
        f"Q: {item.question} A:Let's think step by step. {item.hint} "
        "Therefore, the answer (arabic numerals) is:"
    )


def nli_prompt(item: tasks.NliItem) -> str:
    return f"{item.premise} entails the {item.hypothesis}. True or False? answer:"


def open_qa_prompt(item: tasks.OpenQaItem) -> str:
    return (
        "Refer to the passage below and answer the following question. "
        f"Passage: {item.passage} Question: {item.question}"
    )


def closed_qa_prompt(item: tasks.ClosedQaItem) -> str:
    return (
        "Please answer the given question based on the passage. The answer should be exact "
        f"'yes' or 'no'. passage: {item.passage} question: {item.question}. answer:"
    )


def dialogue_prompt(item: tasks.DialogueItem) -> str:
    # "Chioces" is the seed's spelling, kept so that its prompt is the same text.
    choices = "".join(
        f"({letter}){option}" for letter, option in zip("ABCD", item.options, strict=True)
    )
    return (
        f"Q: {item.article} Which choice is correct? Answer Chioces: {choices} "
        "A: Among A through D, the answer is"
    )


def summarization_prompt(item: tasks.SummaryItem) -> str:
    return f"{item.dialogue}\nTL;DR:"


NER_TYPE_NAMES = {
    "PER": "Person",
    "LOC": "Location",
    "ORG": "Organization",
    "MISC": "Miscellaneous",
}


def ner_text(sentence: tasks.NerSentence) -> str:
    """The seed's sentence text: words joined by spaces, ``,`` and ``.`` attached."""
    text = ""
    for word in sentence.words:
        text += word if word in (",", ".") else " " + word
    return text[1:] if text.startswith(" ") else text


def ner_prompt(sentence: tasks.NerSentence, entity_type: str) -> str:
    return (
        f"Please identify {NER_TYPE_NAMES[entity_type]} Entity from the given text. "
        f"Text: {ner_text(sentence)} Entity:"
    )


def sentiment_prompt(item: tasks.SentimentItem) -> str:
    return (
        "For each snippet of text,label the sentiment of the text as positive or negative."
        f"The answer should be exact 'positive' or 'negative'. text: {item.sentence} answer:"
    )


def normalize_answer(text: str) -> str:
    """SQuAD/NQ normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def span_matches(prediction: str, answers: Sequence[str]) -> bool:
    """Whether any contiguous span of the normalised prediction equals a normalised answer
    (the seed's open-domain QA match, counted once)."""
    wanted = {normalize_answer(answer) for answer in answers}
    words = normalize_answer(prediction).split(" ")
    lengths = {len(answer.split(" ")) for answer in wanted}
    for size in lengths:
        for start in range(len(words) - size + 1):
            if " ".join(words[start : start + size]) in wanted:
                return True
    return False


def entity_spans(words: Sequence[str], tags: Sequence[str]) -> dict[str, list[str]]:
    """The entities of a BIO-tagged sentence by type (``PER`` ...), as space-joined words."""
    spans: dict[str, list[str]] = {entity_type: [] for entity_type in tasks.NER_TYPES}
    current_type, current_words = "", list[str]()
    for word, tag in [*zip(words, tags, strict=True), ("", "O")]:
        inside = tag.startswith("I-") and tag[2:] == current_type
        if current_words and not inside:
            spans[current_type].append(" ".join(current_words))
            current_type, current_words = "", list[str]()
        if tag.startswith("B-") or (tag.startswith("I-") and not inside):
            current_type, current_words = tag[2:], [word]
        elif inside:
            current_words.append(word)
    return spans


def rouge_mean(prediction: str, reference: str) -> float:
    """Mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures (``rouge-score``, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    scores = scorer.score(reference, prediction)
    return (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3


def entity_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    """Entity-level F1 (CoNLL, ``seqeval``) of predicted BIO tag sequences against gold ones."""
    from seqeval.metrics import f1_score

    return float(f1_score([list(g) for g in gold], [list(p) for p in predicted]))


def _binary_gold(task: str, items: Sequence[Any]) -> list[bool]:
    """The true/false label of each item of a two-option task (nli, closed_qa, sentiment)."""
    fields = {"nli": "entailment", "closed_qa": "answer", "sentiment": "positive"}
    return [bool(getattr(item, fields[task])) for item in items]


def _after(text: str, marker: str, index: int) -> str:
    parts = text.split(marker)
    try:
        return parts[index]
    except IndexError:
        return ""


SEED_ANSWER_MARKERS = {
    "reasoning": ("Therefore, the answer (arabic numerals) is:", 1),
    "nli": ("answer:", -1),
    "closed_qa": ("answer:", 1),
    "sentiment": ("answer:", -1),
    "open_qa": ("Answer:", -1),
    "dialogue": ("the answer is", -1),
    "summarization": ("DR:", -1),
    "ner": ("Entity:", 1),
}
"""Per task, the marker the seed splits the decoded prompt + continuation on and which part it
keeps (BoolQ, GSM8K and NER the text after the first marker, the others after the last)."""


def seed_answer(task: str, prompt: str, continuation: str) -> str:
    """The text the seed protocol judges for one generation: the part of ``prompt +
    continuation`` after the task's marker (:data:`SEED_ANSWER_MARKERS`; empty where the
    marker is missing), newlines made spaces for open-domain QA, and for summarization without
    its last 13 characters (the seed's cut, meant for a final ``<|endoftext|>``)."""
    if task not in SEED_ANSWER_MARKERS:
        raise errors.UsageError(f"unknown task {task!r}; known: {', '.join(SEED_ANSWER_MARKERS)}")
    marker, index = SEED_ANSWER_MARKERS[task]
    answer = _after(prompt + continuation, marker, index)
    if task == "open_qa":
        return answer.replace("\n", " ")
    if task == "summarization":
        return answer[0:-13]
    return answer


SEED_NER_MISS_TYPE = "MISC"
"""The one entity type whose non-empty prediction on a sentence without gold entities of the
type counts as a miss in the seed protocol (the seed's, issue 21)."""


def _seed(scorer: Scorer, task: str, items: Sequence[Any]) -> TaskScore:
    count = len(items)
    if task == "reasoning":
        prompts = [reasoning_prompt(item) for item in items]
        outputs = scorer.generate(prompts, 5)
        correct = sum(
            item.answer in seed_answer(task, p, o)
            for item, p, o in zip(items, prompts, outputs, strict=True)
        )
        return TaskScore(task, "seed", "solve_rate", correct / count, count)
    if task in ("nli", "closed_qa", "sentiment"):
        seed_parsing: dict[str, tuple[Callable[[Any], str], str, str, bool]] = {
            "nli": (nli_prompt, "true", "false", False),
            "closed_qa": (closed_qa_prompt, " yes", " no", True),
            "sentiment": (sentiment_prompt, "positive", "negative", False),
        }
        prompt_of, positive, negative, exact = seed_parsing[task]
        prompts = [prompt_of(item) for item in items]
        outputs = scorer.generate(prompts, 1)
        # BoolQ takes the text after the first "answer:", the others after the last (as the seed).
        correct = answered = 0
        for label, prompt, output in zip(_binary_gold(task, items), prompts, outputs, strict=True):
            predict = seed_answer(task, prompt, output).lower()
            says_yes = predict == positive if exact else positive in predict
            says_no = predict == negative if exact else negative in predict
            if says_yes or says_no:
                answered += 1
                # The seed checks "yes"/"true"/"positive" first when both occur.
                correct += (label and says_yes) or (not label and not says_yes)
        accuracy = correct / answered if answered else 0.0
        details = {"accuracy_all_items": correct / count, "answered": answered / count}
        return TaskScore(task, "seed", "accuracy_answered", accuracy, count, details)
    if task == "open_qa":
        prompts = [open_qa_prompt(item) for item in items]
        outputs = scorer.generate(prompts, 20)
        hits = sum(
            span_matches(seed_answer(task, p, o), item.answers)
            for item, p, o in zip(items, prompts, outputs, strict=True)
        )
        return TaskScore(task, "seed", "exact_match", hits / count, count)
    if task == "dialogue":
        prompts = [dialogue_prompt(item) for item in items]
        outputs = scorer.generate(prompts, 1)
        correct = other = 0
        for item, prompt, output in zip(items, prompts, outputs, strict=True):
            predict = seed_answer(task, prompt, output)
            if any(letter in predict for letter in "ABCD"):
                correct += item.answer in predict
            else:
                other += 1
        details = {"unanswered": other / count}
        return TaskScore(task, "seed", "accuracy", correct / count, count, details)
    if task == "summarization":
        prompts = [summarization_prompt(item) for item in items]
        outputs = scorer.generate(prompts, 25)
        total = 0.0
        for item, prompt, output in zip(items, prompts, outputs, strict=True):
            predict = seed_answer(task, prompt, output)
            if len(predict) > 1:
                total += rouge_mean(predict, item.summary)
        return TaskScore(task, "seed", "rouge_mean_f", total / count, count)
    if task == "ner":
        jobs = [(s, t) for s in items for t in tasks.NER_TYPES]
        outputs = scorer.generate([ner_prompt(s, t) for s, t in jobs], 10)
        found = dict.fromkeys(tasks.NER_TYPES, 0)
        asked = dict.fromkeys(tasks.NER_TYPES, 0)
        for (sentence, entity_type), output in zip(jobs, outputs, strict=True):
            predict = seed_answer(task, ner_prompt(sentence, entity_type), output)
            gold = entity_spans(sentence.words, sentence.tags)[entity_type]
            if not gold:
                empty = len(predict) == 0
                asked[entity_type] += empty or entity_type == SEED_NER_MISS_TYPE
                found[entity_type] += empty
            else:
                asked[entity_type] += len(gold)
                found[entity_type] += sum(entity in predict for entity in gold)
        recalls = {t: found[t] / asked[t] if asked[t] else 0.0 for t in tasks.NER_TYPES}
        score = sum(recalls.values()) / len(recalls)
        return TaskScore(task, "seed", "entity_recall_mean", score, count, recalls)
    raise errors.UsageError(f"unknown task {task!r}; known: {', '.join(tasks.TASK_LOADERS)}")


NER_OPTIONS = {
    "PER": " a person",
    "LOC": " a location",
    "ORG": " an organization",
    "MISC": " another name",
    "O": " not a name",
}


def _loglik(scorer: Scorer, task: str, items: Sequence[Any]) -> TaskScore:
    count = len(items)
    if task in ("nli", "closed_qa", "sentiment"):
        option_prompts: dict[str, tuple[Callable[[Any], str], tuple[str, str]]] = {
            "nli": (nli_prompt, (" True", " False")),
            "closed_qa": (closed_qa_prompt, (" yes", " no")),
            "sentiment": (sentiment_prompt, (" positive", " negative")),
        }
        prompt_of, options = option_prompts[task]
        chosen = scorer.choose([prompt_of(item) for item in items], [options] * count)
        labels = _binary_gold(task, items)
        correct = sum((choice == 0) == label for choice, label in zip(chosen, labels, strict=True))
        return TaskScore(task, "loglik", "accuracy", correct / count, count)
    if task == "dialogue":
        chosen = scorer.choose(
            [item.article for item in items],
            [[" " + option for option in item.options] for item in items],
        )
        correct = sum("ABCD"[c] == item.answer for c, item in zip(chosen, items, strict=True))
        return TaskScore(task, "loglik", "accuracy", correct / count, count)
    if task in ("reasoning", "open_qa"):
        contexts: list[str] = []
        answers: list[str] = []
        owners: list[int] = []
        for index, item in enumerate(items):
            if task == "reasoning":
                gold = [item.answer]
                context = reasoning_prompt(item)
            else:
                gold = list(item.answers)
                context = open_qa_prompt(item) + " Answer:"
            for answer in gold:
                contexts.append(context)
                answers.append(" " + answer.strip())
                owners.append(index)
        result = scorer.continuations(contexts, answers)
        greedy = [False] * count
        per_token = [float("-inf")] * count
        for owner, is_greedy, log_prob, size in zip(
            owners, result.is_greedy, result.log_prob, result.num_tokens, strict=True
        ):
            greedy[owner] = greedy[owner] or is_greedy
            per_token[owner] = max(per_token[owner], log_prob / max(size, 1))
        details = {"answer_token_logprob": sum(per_token) / count}
        return TaskScore(task, "loglik", "greedy_match", sum(greedy) / count, count, details)
    if task == "summarization":
        result = scorer.continuations(
            [summarization_prompt(item) for item in items],
            [" " + item.summary.strip() for item in items],
        )
        tokens = sum(result.num_tokens)
        mean = sum(result.log_prob) / max(tokens, 1)
        details = {"perplexity": float(torch.tensor(-mean).exp())}
        return TaskScore(task, "loglik", "reference_token_logprob", mean, count, details)
    if task == "ner":
        types = list(NER_OPTIONS)
        contexts, owners_words = [], []
        for sentence_index, sentence in enumerate(items):
            text = ner_text(sentence)
            for word_index, word in enumerate(sentence.words):
                contexts.append(f'Text: {text}\nIn this text, "{word}" is')
                owners_words.append((sentence_index, word_index))
        chosen = scorer.choose(contexts, [[NER_OPTIONS[t] for t in types]] * len(contexts))
        predicted: list[list[str]] = [["O"] * len(sentence.words) for sentence in items]
        for (sentence_index, word_index), choice in zip(owners_words, chosen, strict=True):
            entity_type = types[choice]
            if entity_type == "O":
                continue
            row = predicted[sentence_index]
            previous = row[word_index - 1] if word_index else "O"
            continues = previous != "O" and previous[2:] == entity_type
            row[word_index] = f"{'I' if continues else 'B'}-{entity_type}"
        score = entity_f1([sentence.tags for sentence in items], predicted)
        return TaskScore(task, "loglik", "entity_f1", score, count)
    raise errors.UsageError(f"unknown task {task!r}; known: {', '.join(tasks.TASK_LOADERS)}")


def evaluate_task(scorer: Scorer, task: str, items: Sequence[Any], protocol: str) -> TaskScore:
    """Score ``items`` of ``task`` (a key of :data:`remedi.data.general_tasks.TASK_LOADERS`)
    under ``protocol`` (``seed`` or ``loglik``)."""
    if protocol not in PROTOCOLS:
        raise errors.UsageError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if not items:
        raise errors.UsageError(f"task {task!r} has no items to score")
    return (_seed if protocol == "seed" else _loglik)(scorer, task, items)
