"""The parity harness (benchmarks/parity): its reference loader patches a release's source
exactly as stated and leaves no trace of the release behind; the seed task scripts get the
first items of the real files and their result files read back item by item."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from benchmarks.parity import canonical, reference, seed_tasks
from benchmarks.parity.setup import relative_difference
from remedi import env
from remedi.data import general_tasks


def _release(root: Path) -> Path:
    package = root / "fakeref"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('NAME = "cuda"\n')
    (package / "device.py").write_text('DEVICE = "cuda"\nOTHER = "cuda"\n')
    return root


def test_patched_module_runs_with_the_replacement_and_is_gone_after(tmp_path: Path) -> None:
    root = _release(tmp_path)
    patches = {"fakeref.device": [reference.cuda_to_cpu(2)]}
    with reference.reference_modules(root, ["fakeref"], patches, required=["fakeref/device.py"]):
        module = reference.load("fakeref.device")
        assert (module.DEVICE, module.OTHER) == ("cpu", "cpu")
    assert "fakeref" not in sys.modules and "fakeref.device" not in sys.modules
    assert str(root) not in sys.path


def test_a_package_init_is_patched_and_its_submodules_import(tmp_path: Path) -> None:
    root = _release(tmp_path)
    patches = {"fakeref": [reference.cuda_to_cpu(1)]}
    with reference.reference_modules(root, ["fakeref"], patches):
        assert reference.load("fakeref").NAME == "cpu"
        assert reference.load("fakeref.device").DEVICE == "cuda"  # not patched: not listed


def test_a_patch_that_no_longer_matches_the_checkout_fails(tmp_path: Path) -> None:
    root = _release(tmp_path)
    patches = {"fakeref.device": [reference.cuda_to_cpu(3)]}
    with (
        reference.reference_modules(root, ["fakeref"], patches),
        pytest.raises(reference.ReferenceCheckoutError, match="occurs 2 times"),
    ):
        reference.load("fakeref.device")


def test_a_folder_that_is_not_the_release_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(reference.ReferenceCheckoutError, match=r"rome_main\.py is missing"),
        reference.reference_modules(tmp_path, ["rome"], {}, required=["rome/rome_main.py"]),
    ):
        pass


def test_a_release_package_named_like_ours_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(reference.ReferenceCheckoutError, match="own process"),
        reference.reference_modules(tmp_path, ["remedi"], {}),
    ):
        pass


def test_relative_difference_is_the_frobenius_ratio() -> None:
    reference_value = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert relative_difference(
        reference_value + torch.tensor([[0.5, 0.0], [0.0, 0.0]]), reference_value
    ) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="shapes differ"):
        relative_difference(torch.zeros(2), reference_value)


def test_patched_source_applies_counted_replacements_in_memory(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("model.to('cuda')\nbatch.to('cuda')\n")
    patches = [reference.Patch("'cuda'", "'cpu'", 2, "device")]
    assert reference.patched_source(script, patches) == "model.to('cpu')\nbatch.to('cpu')\n"
    assert "'cuda'" in script.read_text()  # the file itself is untouched
    with pytest.raises(reference.ReferenceCheckoutError, match="occurs 2 times"):
        reference.patched_source(script, [reference.Patch("'cuda'", "'cpu'", 1, "device")])


@pytest.mark.shared_data
@pytest.mark.parametrize("task", [script.task for script in seed_tasks.SCRIPTS])
def test_the_first_items_written_for_a_seed_script_are_the_first_items_we_load(
    task: str, tmp_path: Path
) -> None:
    task_dir = env.shared_data_dir() / "edit_harms" / "task-data"
    seed_tasks.write_first_items(task, task_dir, tmp_path, 5)
    written = general_tasks.load_task(task, tmp_path)
    everything = general_tasks.load_task(task, task_dir)
    # CoNLL-2003's first block is a -DOCSTART- line, one of the script's five items, not ours.
    assert list(written) == list(everything[: 4 if task == "ner" else 5])


NLI_RESULT = (
    "not_entailment\t' True'\n"
    "entailment\t'\\n'\n"  # a generated newline stays on its item's line
    "entailment\t' False'\n"
    "1\t0\t0\t1\t1\n"
    "0.5\t0.3333333333333333\n"
)


def test_a_seed_result_file_reads_back_per_item_answers_and_the_score() -> None:
    result = seed_tasks.read_seed_result("nli", NLI_RESULT)
    assert result.answers == [" True", "\n", " False"]
    assert (result.score, result.details) == (0.5, {"accuracy_all_items": 1 / 3})
    error = seed_tasks.read_seed_result("dialogue", "B\t' none'\nA\t' x'\nerror\n")
    assert (error.answers, error.score) == ([" none", " x"], 0.0)
    summary = seed_tasks.read_seed_result(
        "summarization", "'Amy\\nleft.'\t' Amy'\t0\t0.5\n'Bo'\t''\t0\t0\n0.0\t0.25\n"
    )
    assert (summary.answers, summary.score, summary.details) == ([" Amy", ""], 0.25, {"bleu": 0.0})


def _ner_block(sentence: str, predictions: Sequence[str]) -> str:
    lines = [seed_tasks.RESULT_SEPARATOR, sentence, "", "", "", ""]
    for label, prediction in zip(seed_tasks.NER_PREDICTION_LABELS, predictions, strict=True):
        lines += [f"{label}:", f"{label} predict:{prediction!r}"]
    return "\n".join(lines) + "\n"


def test_a_seed_ner_result_leaves_out_docstart_blocks_in_our_type_order() -> None:
    text = (
        _ner_block(" -DOCSTART-", ["", "", "", " x"])
        + _ner_block(" John lives in Paris.", [" John", " Paris", "", " \n"])
        + "1.0\n0.5\n1.0\n0.25\n0.6875\n"
    )
    result = seed_tasks.read_seed_result("ner", text)
    assert result.answers == [" John", " Paris", "", " \n"]
    assert (result.skipped_items, result.score) == (1, 0.6875)
    assert result.details == {"PER": 1.0, "LOC": 0.5, "ORG": 1.0, "MISC": 0.25}


def test_answers_are_compared_as_the_script_writes_them() -> None:
    # NQ: the script writes the normalised prediction.
    assert seed_tasks.answer_mismatches(
        "open_qa", [" The Eiffel Tower!", "a"], ["eiffel tower", "b"]
    ) == [1]
    # Its judged NQ text starts with the decoded left padding, glued to the prompt's first word.
    assert (
        seed_tasks.answer_mismatches("open_qa", [" Refer to it"], ["padpadrefer to it"], "pad")
        == []
    )
    assert seed_tasks.answer_mismatches("open_qa", [" Refer to it"], ["padrefer to"], "pad") == [0]
    assert seed_tasks.answer_mismatches("nli", [" True"], [" true"]) == [0]
    assert seed_tasks.answer_mismatches("nli", [" True"], [" True", " False"]) == [0, 1]


def test_the_midpoint_threshold_passes_half_the_examples() -> None:
    scores = torch.tensor([3.0, -1.0, 10.0, 2.0])
    threshold = canonical._midpoint_threshold(scores)
    assert threshold == 2.5
    assert int((scores <= threshold).sum()) == 2
