"""General-ability scoring: hand-checked ROUGE and entity F1, parsing, both protocols, RECT."""

from __future__ import annotations

import copy

import pytest
import torch
from rouge_score import rouge_scorer
from seqeval.metrics import f1_score

from remedi import env, errors, models
from remedi.data import general_tasks as tasks
from remedi.evaluation.general import abilities
from remedi.methods import rect
from tests.conftest import tiny_gpt2
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return models.ModelAndTokenizer(tiny_gpt2(tokenizer), tokenizer, "tiny-gpt2")


def test_rouge_mean_matches_a_hand_computed_value_and_rouge_score():
    # R1: 3 of 3 predicted unigrams in the 6-word reference: P 1, R 1/2, F 2/3. R2: 2 of 2
    # bigrams among 5: F 2*0.4/1.4 = 4/7. RL: LCS 3, as R1: 2/3. Mean (2/3 + 4/7 + 2/3) / 3.
    expected = (2 / 3 + 4 / 7 + 2 / 3) / 3
    assert abilities.rouge_mean("the cat sat", "the cat sat on the mat") == pytest.approx(expected)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    scores = scorer.score("the cat sat on the mat", "the cat sat")
    assert expected == pytest.approx(sum(s.fmeasure for s in scores.values()) / 3)
    assert abilities.rouge_mean("dogs bark", "the cat sat") == 0.0


def test_entity_f1_matches_hand_counts_and_seqeval():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]]
    # Sentence 1: PER right, LOC labelled ORG. Sentence 2: both right. 3 of 4 either way.
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-PER", "I-PER", "O", "B-LOC"]]
    assert abilities.entity_f1(gold, predicted) == pytest.approx(0.75)
    assert abilities.entity_f1(gold, predicted) == pytest.approx(f1_score(gold, predicted))
    # A span cut short is wrong at entity level: 1 of 2 per sentence.
    short = [["B-PER", "O", "O", "B-LOC"]] * 2
    assert abilities.entity_f1(gold, short) == pytest.approx(0.5)


def test_entity_spans_follow_bio_and_the_seed_text_attaches_punctuation():
    sentence = tasks.NerSentence(
        ("John", "Smith", "visited", "New", "York", ",", "Reuters", "said", "."),
        ("B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG", "O", "O"),
    )
    spans = abilities.entity_spans(sentence.words, sentence.tags)
    assert spans == {"PER": ["John Smith"], "LOC": ["New York"], "ORG": ["Reuters"], "MISC": []}
    # An I- of another type starts a new entity; a sentence may end inside one.
    assert abilities.entity_spans(["A", "B"], ["B-PER", "I-LOC"]) == {
        "PER": ["A"],
        "LOC": ["B"],
        "ORG": [],
        "MISC": [],
    }
    assert abilities.ner_text(sentence) == "John Smith visited New York, Reuters said."


class ScriptedScorer:
    """A stand-in for :class:`abilities.Scorer` whose greedy continuations are written by hand:
    ``outputs[prompt]`` is what "the model" generates after ``prompt``."""

    def __init__(self, outputs: dict[str, str]):
        self.outputs = outputs
        self.asked: list[tuple[str, int]] = []

    def generate(self, prompts, max_new_tokens):
        self.asked.extend((prompt, max_new_tokens) for prompt in prompts)
        return [self.outputs[prompt] for prompt in prompts]


NER_SENTENCES = [
    tasks.NerSentence(
        ("John", "Smith", "visited", "Paris", "."), ("B-PER", "I-PER", "O", "B-LOC", "O")
    ),
    tasks.NerSentence(("Reuters", "said", "."), ("B-ORG", "O", "O")),
]


def test_seed_ner_counts_a_prediction_without_gold_entities_as_a_miss_for_misc_only():
    john, reuters = NER_SENTENCES
    outputs = {
        (john, "PER"): " John Smith",  # gold John Smith: 1 of 1
        (john, "LOC"): " London",  # gold Paris: 0 of 1
        (john, "ORG"): " Reuters",  # no gold ORG, non-empty: not counted
        (john, "MISC"): " Paris",  # no gold MISC, non-empty: a miss (MISC only)
        (reuters, "PER"): "",  # no gold PER, empty: a hit
        (reuters, "LOC"): " Reuters",  # no gold LOC, non-empty: not counted
        (reuters, "ORG"): " Reuters said",  # gold Reuters, inside the prediction: 1 of 1
        (reuters, "MISC"): "",  # no gold MISC, empty: a hit
    }
    scorer = ScriptedScorer(
        {abilities.ner_prompt(s, t): output for (s, t), output in outputs.items()}
    )
    score = abilities.evaluate_task(scorer, "ner", NER_SENTENCES, "seed")
    # PER 2 of 2, LOC 0 of 1, ORG 1 of 1, MISC 1 of 2 (counting every type's miss: ORG 1 of 2,
    # LOC 0 of 2, mean 0.5).
    assert score.details == {"PER": 1.0, "LOC": 0.0, "ORG": 1.0, "MISC": 0.5}
    assert (score.metric, score.score, score.count) == ("entity_recall_mean", 0.625, 2)
    assert {tokens for _, tokens in scorer.asked} == {10}


def scripted(prompt_of, items, outputs) -> ScriptedScorer:
    """A scorer that continues each item's prompt with its output (the prompts all differ)."""
    scorer = ScriptedScorer(
        {prompt_of(item): output for item, output in zip(items, outputs, strict=True)}
    )
    assert len(scorer.outputs) == len(items)
    return scorer


def test_seed_boolq_parses_the_text_after_the_first_answer_marker():
    def item(passage: str, answer: bool) -> tasks.ClosedQaItem:
        return tasks.ClosedQaItem(f"is it so {len(passage)}", "Title", passage, answer)

    items = [
        item("It is.", True),
        item("It is so.", True),
        item("It is not.", False),
        item("It is not so.", False),
        item("The answer: yes, it is.", True),  # the passage's "answer:" is the first marker
        item("Maybe.", False),
    ]
    outputs = [
        " yes",  # answered, right
        " No",  # lower-cased: answered, wrong
        " no",  # answered, right
        " yes.",  # the whole text must be " yes" or " no" (issue 21 names BoolQ's matching)
        " yes",  # the text after the first marker is the passage's: not an answer
        " maybe",  # not an answer
    ]
    scorer = scripted(abilities.closed_qa_prompt, items, outputs)
    score = abilities.evaluate_task(scorer, "closed_qa", items, "seed")
    # 2 right of 3 answered, of 6 items.
    assert (score.metric, score.count) == ("accuracy_answered", 6)
    assert score.score == pytest.approx(2 / 3, rel=1e-15)
    assert score.details == pytest.approx({"accuracy_all_items": 2 / 6, "answered": 3 / 6})
    assert {tokens for _, tokens in scorer.asked} == {1}


def test_seed_mutual_counts_a_letter_anywhere_in_the_continuation():
    options = ("m: one.", "m: two.", "m: three.", "m: four.")
    answers = ["B", "A", "B", "C", "D"]
    items = [
        tasks.DialogueItem(f"dev_{n}", f"f: question {n}?", options, answer)
        for n, answer in enumerate(answers, start=1)
    ]
    outputs = [
        " (B)",  # right
        " C",  # answered, wrong
        " Because",  # its capital B counts: right
        " none",  # no letter A-D: unanswered
        " C or D",  # the answer's letter is in it: right
    ]
    scorer = scripted(abilities.dialogue_prompt, items, outputs)
    score = abilities.evaluate_task(scorer, "dialogue", items, "seed")
    assert (score.metric, score.score, score.count) == ("accuracy", 3 / 5, 5)
    assert score.details == {"unanswered": 1 / 5}
    assert {tokens for _, tokens in scorer.asked} == {1}


def test_seed_answer_is_the_text_after_the_tasks_marker_as_the_seed_cuts_it():
    # BoolQ, GSM8K and NER keep the text after the first marker; the others after the last.
    assert abilities.seed_answer("closed_qa", "passage: answer: no. answer:", " yes") == " no. "
    assert abilities.seed_answer("nli", "a answer: b. answer:", " True") == " True"
    assert abilities.seed_answer("ner", "Text: x Entity:", " Entity: y") == " "
    # Summarization drops 13 characters, an "<|endoftext|>" when generation ended there.
    assert abilities.seed_answer("summarization", "d\nTL;DR:", " A B<|endoftext|>") == " A B"
    assert abilities.seed_answer("summarization", "d\nTL;DR:", " short") == ""
    assert abilities.seed_answer("open_qa", "Question: q", " Answer: a\nb") == " a b"
    # No marker after the split: nothing to judge.
    assert abilities.seed_answer("reasoning", "no marker", " 42") == ""
    with pytest.raises(errors.UsageError, match="unknown task"):
        abilities.seed_answer("toy_recall", "p", "c")


def test_open_qa_match_is_any_normalised_span():
    assert abilities.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert abilities.span_matches("it is the Eiffel Tower, in Paris", ["eiffel tower"])
    assert not abilities.span_matches("it is the Eiffel", ["Eiffel Tower"])


def test_continuations_batched_equal_one_by_one(mt):
    # Batching and padding agree with single rows only in exact arithmetic.
    mt64 = models.ModelAndTokenizer(copy.deepcopy(mt.model).double(), mt.tokenizer, "tiny64")
    contexts = ["Mira Talovan lives in", "The Eiffel Tower is located in Paris, the capital of"]
    options = [" Lisbon", " France and Oslo"]
    batched = abilities.Scorer(mt64, batch_size=4).continuations(contexts, options)
    for index in range(2):
        single = abilities.Scorer(mt64, batch_size=1).continuations(
            contexts[index : index + 1], options[index : index + 1]
        )
        assert_equal_in_exact_arithmetic(
            single.log_prob[0], batched.log_prob[index], precision_of(mt64)
        )
        assert single.num_tokens[0] == batched.num_tokens[index]
    generated = abilities.Scorer(mt64, batch_size=4).generate(contexts, 3)
    assert generated == [abilities.Scorer(mt64, batch_size=1).generate([c], 3)[0] for c in contexts]


@pytest.mark.shared_data
def test_every_real_task_is_scored_under_both_protocols_on_a_tiny_model(mt):
    scorer = abilities.Scorer(mt, batch_size=4)
    for task in tasks.TASK_LOADERS:
        items = tasks.load_task(task, env.shared_data_dir() / "edit_harms" / "task-data")[:3]
        for protocol in abilities.PROTOCOLS:
            score = abilities.evaluate_task(scorer, task, items, protocol)
            assert (score.task, score.protocol, score.count) == (task, protocol, 3)
            assert score.metric
            if score.metric != "reference_token_logprob":
                assert 0.0 <= score.score <= 1.0
            else:
                assert score.score < 0
    with pytest.raises(errors.UsageError, match="unknown protocol"):
        abilities.evaluate_task(scorer, "nli", items, "exact")


def test_rect_keeps_the_top_share_of_relative_changes():
    old = torch.tensor([[1.0, 2.0, 4.0, 10.0], [0.5, -1.0, 3.0, 1.0]])
    delta = torch.tensor([[0.5, 0.1, 0.4, 1.0], [0.2, -0.9, 0.3, 0.05]])
    # Relative changes: .5 .05 .1 .1 / .4 .9 .1 .05 -> the top 25% (2 of 8) are .9 and .5.
    kept = rect.regularize(old, old + delta, share=0.25)
    expected = old.clone()
    expected[1, 1] += delta[1, 1]
    expected[0, 0] += delta[0, 0]
    assert torch.equal(kept, expected)
    assert torch.equal(rect.regularize(old, old + delta, share=1.0), old + delta)
    assert rect.DEFAULT_SHARE == 0.2
    with pytest.raises(errors.UsageError, match=r"share must be in \(0, 1\]"):
        rect.regularize(old, old + delta, share=0.0)
    weights = rect.regularize_weights({"w": old}, {"w": old + delta}, 0.25)
    assert torch.equal(weights["w"], expected)
