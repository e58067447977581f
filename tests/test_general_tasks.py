"""The harms paper's eight task files and zsRE load through their loaders; bad rows are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remedi import env, errors
from remedi.data import general_tasks, zsre

# Items per real file (CoNLL: sentences of the dev split, -DOCSTART- lines skipped).
REAL_COUNTS = {
    "reasoning": 1319,
    "nli": 2489,
    "open_qa": 3610,
    "closed_qa": 3267,
    "dialogue": 886,
    "summarization": 818,
    "ner": 3250,
    "sentiment": 872,
}


def harms_dir() -> Path:
    return env.shared_data_dir() / "edit_harms"


@pytest.mark.shared_data
@pytest.mark.parametrize("task", list(REAL_COUNTS))
def test_each_real_task_file_loads(task):
    items = general_tasks.load_task(task, harms_dir() / "task-data")
    assert len(items) == REAL_COUNTS[task]
    first = items[0]
    if task == "reasoning":
        assert first.answer == "18" and "16 - 3 - 4" in first.hint
    elif task == "nli":
        assert first.entailment is False
    elif task == "dialogue":
        assert first.item_id == "dev_1" and first.answer == "B" and len(first.options) == 4
        assert items[-1].item_id == "dev_886"
    elif task == "ner":
        assert first.words[2] == "LEICESTERSHIRE" and first.tags[2] == "B-ORG"
    elif task == "sentiment":
        assert first.positive is True


@pytest.mark.shared_data
def test_rte_sentences_are_read_verbatim_with_their_quotes():
    """Quotes inside RTE's tab-separated sentences are text (``csv.QUOTE_NONE``): csv's default
    quoting would rewrite the 69 rows with a sentence that opens with a quote (issue 21)."""
    file = harms_dir() / "task-data" / "test-NLI.tsv"
    rows = [line.split("\t") for line in file.read_text(encoding="utf-8").split("\n")[1:] if line]
    items = general_tasks.load_nli(file)
    assert len(items) == len(rows) == 2489
    assert [(item.premise, item.hypothesis) for item in items] == [tuple(row[1:3]) for row in rows]
    opening = [item for item in items if '"' in item.premise[:1] + item.hypothesis[:1]]
    assert len(opening) == 69
    assert items[50].premise.startswith('"Instead of action on crime, we got the federal long')
    assert '." said Harper.' in items[50].premise


@pytest.mark.shared_data
def test_zsre_files_load_with_portability_probes():
    evaluation = zsre.load_zsre(
        harms_dir() / "edited-data" / "zsre_mend_eval_portability_gpt4.json"
    )
    assert len(evaluation) == 1037
    assert all(edit.portability_prompt and edit.portability_answer for edit in evaluation)
    assert evaluation[0].target_new == "2006" and evaluation[0].target_true == "1998"
    train = zsre.load_zsre(env.shared_data_dir() / "zsre" / "zsre_mend_train-1k.json")
    assert len(train) == 998  # two rows have an empty "alt" and are skipped
    assert train[0].portability_prompt == ""


@pytest.mark.parametrize(
    ("name", "text", "load", "match"),
    [
        (
            "test-reasoning.jsonl",
            "".join(
                json.dumps(row) + "\n"
                for row in [{"question": "q", "answer": "a #### 1"}, {"question": "q2"}]
            ),
            general_tasks.load_reasoning,
            r"test-reasoning.jsonl, row 2: missing column\(s\) answer",
        ),
        (
            "test-NLI.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n",
            general_tasks.load_nli,
            r"row 3: missing column\(s\) label",
        ),
        (
            "test-NLI.tsv",
            "index\tsentence1\tlabel\n0\ta\tentailment\n",
            general_tasks.load_nli,
            r"row 1 \(header\): missing column\(s\) sentence2",
        ),
        (
            "test-NER.txt",
            "EU NNP B-NP B-ORG\nrejects VBZ B-VP\n",
            general_tasks.load_ner,
            r"row 2: missing column\(s\) tag",
        ),
        (
            "zsre.json",
            json.dumps([{"subject": "A", "src": "A?"}]),
            zsre.load_zsre,
            r"row 0: misses column\(s\) rephrase",
        ),
    ],
)
def test_a_missing_column_names_the_file_row_and_column(tmp_path, name, text, load, match):
    file = tmp_path / name
    file.write_text(text)
    with pytest.raises(errors.FileFormatError, match=match):
        load(file)


def test_a_missing_task_file_says_so(tmp_path):
    with pytest.raises(errors.MissingFileError, match="task file not found"):
        general_tasks.load_sentiment(tmp_path / "absent.tsv")


def test_dialogue_files_are_read_in_numeric_order_as_json_or_python_literals(tmp_path):
    record = {"answers": "C", "options": ["a", "b", "c", "d"], "article": "m : hi", "id": "dev_x"}
    for number in (10, 2, 1):
        text = json.dumps({**record, "id": f"dev_{number}"})
        if number == 2:
            text = repr({**record, "id": f"dev_{number}"})  # the seed eval()s these files
        (tmp_path / f"dev_{number}.txt").write_text(text)
    items = general_tasks.load_dialogue(tmp_path)
    assert [item.item_id for item in items] == ["dev_1", "dev_2", "dev_10"]
    (tmp_path / "dev_3.txt").write_text(json.dumps({**record, "answers": "E"}))
    with pytest.raises(errors.FileFormatError, match=r"dev_3\.txt, row 1"):
        general_tasks.load_dialogue(tmp_path)
