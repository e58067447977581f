"""CounterFact's prompts as the REMEDI reference built them: the cleaned first paraphrase.

The paraphrases are real: tests/fixtures/counterfact_paraphrases.json holds EasyEdit-format
records copied verbatim from ../shared/data/counterfact_easyedit (``rephrase_prompt`` stands in
for ROME's first paraphrase prompt). Expected outputs follow the reference's
``_strip_counterfact_paraphrase_prompt``; where Punkt and spaCy split differently, the test
says what the reference's spaCy split gave.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from remedi import data, env, models, training

FIXTURES = Path(__file__).parent / "fixtures"
PARAPHRASES_FIXTURE = FIXTURES / "counterfact_paraphrases.json"
ROME_FIXTURE = FIXTURES / "counterfact_sample.json"


@pytest.fixture(scope="module")
def records() -> dict[int, dict]:
    """The real EasyEdit records by case id."""
    return {record["case_id"]: record for record in json.loads(PARAPHRASES_FIXTURE.read_text())}


def clean(record: dict) -> str | None:
    return data.clean_counterfact_paraphrase(record["subject"], record["rephrase_prompt"])


# ---------------------------------------------------------------------------------------
# One test per cleaning rule, on real paraphrases.


def test_text_before_the_last_newline_is_dropped(records):
    # "Geography\nThe Oudon River forms ... border. Uttaradit, in": the heading goes with the
    # newline, then the sentence without the entity goes too.
    assert clean(records[261]) == "Uttaradit, in"


def test_a_category_title_keeps_the_text_from_the_entity_on(records):
    # As in the reference, everything before the entity goes, even "The occupation of".
    assert clean(records[1758]) == "Michael Romanoff is"
    # "Category:Atlante F.C. Which position does Leung Tsz Chun play? They play as"
    assert clean(records[9551]) == "Leung Tsz Chun play? They play as"


def test_the_birth_year_artifact_is_dropped(records):
    # With a newline before it ("1929)\n Steve Martin Caro, pop vocalist (b. Gary Carter ...")
    assert clean(records[914]) == "Gary Carter plays"
    # and without one ("1724), Benjamin (b. Tagus river is in"): only the artifact rule acts.
    assert "\n" not in records[8100]["rephrase_prompt"]
    assert clean(records[8100]) == "Tagus river is in"


@pytest.mark.parametrize("artifact", ["(tr. ", "(min. "])
def test_the_translation_and_minister_artifacts_are_dropped(records, artifact):
    # No first paraphrase among the 21,919 real ones has these (ROME's other paraphrases do),
    # so the real " (b. " debris of case 8100 carries them instead.
    paraphrase = records[8100]["rephrase_prompt"].replace(" (b. ", f" {artifact}")
    assert artifact in paraphrase
    assert data.clean_counterfact_paraphrase("Tagus river", paraphrase) == "Tagus river is in"


def test_a_question_before_the_sentence_is_kept(records):
    # Three sentences: the one before the last asks about the entity, so both stay.
    assert clean(records[347]) == "Which position does Tarvaris Jackson play? They play as"


def test_only_the_last_of_several_sentences_is_kept(records):
    assert clean(records[1722]) == "The profession of Krister Henriksson is"


def test_a_period_the_splitter_missed_still_ends_the_debris(records):
    # Punkt does not split after an initial ("Chris B.", "Bonny B."), so the text after the
    # last period is kept, as the reference's last rule does.
    assert clean(records[14046]) == "What sport does Hristo Stoichkov play? They play"
    assert clean(records[5898]) == "World War II is located in"


def test_splits_that_break_the_entity_are_merged_back(records):
    # Punkt splits after "I.R.S." (inside the entity) ...
    assert data.split_sentences(records[394]["rephrase_prompt"])[1:] == [
        "I.R.S. ",
        "Records Presents The Cutting Edge premiered on",
    ]
    assert clean(records[394]) == "I.R.S. Records Presents The Cutting Edge premiered on"
    # ... and right after it, where no space follows: the merge keeps the text as written.
    paraphrase = records[20916]["rephrase_prompt"]
    assert data.split_sentences(paraphrase) == [
        "People in Washington, D.C.",
        "'s twin city speak the language of",
    ]
    assert clean(records[20916]) == paraphrase


def test_sentences_partition_the_text(records):
    for record in records.values():
        last_line = record["rephrase_prompt"].split("\n")[-1]
        assert "".join(data.split_sentences(last_line)) == last_line


def test_a_clean_paraphrase_is_kept_as_it_is(records):
    # For case 0 EasyEdit's rephrase_prompt is one of ROME's generation prompts, not its first
    # paraphrase prompt ("Shayna does this ... Danielle Darrieux, a native").
    assert clean(records[0]) == records[0]["rephrase_prompt"]


def test_where_punkt_and_spacy_split_differently(records):
    # The reference's spaCy split kept the bracket: ") Shigeki Maruyama, who has ...".
    assert clean(records[9826]) == "Shigeki Maruyama, who has a citizenship from"
    # spaCy split "Bridges | The occupation of ..." without punctuation; Punkt keeps it.
    assert clean(records[20662]) == "Bridges The occupation of Dhananjay Singh is"


def test_losing_the_entity_falls_back(records):
    # No real first paraphrase loses its entity; a name followed by its birth year (the
    # artifact after the entity) does: the reference fails, here the rewrite prompt is used.
    lost = "Gary Carter (b. 1954) plays"
    assert data.clean_counterfact_paraphrase("Gary Carter", lost) is None
    # When the entity survives the debris rules but not the sentence choice, the reference
    # returns the text after the debris rules (its last resort), and so does this.
    last_resort = "Gary Carter caught for the Mets. His sport is"
    assert data.clean_counterfact_paraphrase("Gary Carter", last_resort) == last_resort


def _write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


# ---------------------------------------------------------------------------------------
# The prompt source, in both formats.


def test_easyedit_prompt_source(records, tmp_path, caplog):
    fixture_records = json.loads(PARAPHRASES_FIXTURE.read_text())
    with caplog.at_level(logging.INFO, logger="remedi.data"):
        paraphrased = data.load_dataset("counterfact_easyedit", file=PARAPHRASES_FIXTURE)
    assert "0 fell back to the rewrite prompt" in caplog.text
    rewritten = data.load_dataset(
        "counterfact_easyedit", file=PARAPHRASES_FIXTURE, prompt_source="rewrite"
    )
    for sample, rewrite, record in zip(paraphrased, rewritten, fixture_records, strict=True):
        assert sample["prompt"] == clean(record)
        assert rewrite["prompt"] == record["prompt"]
        # Only the prompt depends on the choice; the context is always the rewrite.
        assert (
            sample["context"] == rewrite["context"] == f"{record['prompt']} {record['target_new']}"
        )
        assert {**sample, "prompt": None} == {**rewrite, "prompt": None}

    # Records without a paraphrase, or whose paraphrase loses the entity, use the rewrite prompt.
    no_paraphrase = {k: v for k, v in records[914].items() if k != "rephrase_prompt"}
    lost = {**records[8100], "rephrase_prompt": "Tagus river (b. 1900) is in"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="remedi.data"):
        samples = data.load_dataset(
            "counterfact_easyedit", file=_write(tmp_path / "f.json", [no_paraphrase, lost])
        )
    assert samples["prompt"] == [records[914]["prompt"], records[8100]["prompt"]]
    assert "2 fell back to the rewrite prompt" in caplog.text
    assert "1 rewrite prompt: the record has no paraphrase" in caplog.text
    assert "1 rewrite prompt: cleaning the paraphrase lost the subject" in caplog.text


def test_rome_prompt_source_and_the_shared_record_sample(tmp_path, caplog):
    raw = json.loads(ROME_FIXTURE.read_text())
    with caplog.at_level(logging.INFO, logger="remedi.data"):
        paraphrased = data.load_dataset("counterfact", file=ROME_FIXTURE)
    rewritten = data.load_dataset("counterfact", file=ROME_FIXTURE, prompt_source="rewrite")

    # Case 0 is ROME's real record; its first paraphrase is cleaned as in the reference.
    assert paraphrased[0]["prompt"] == "Danielle Darrieux, a native"
    assert rewritten[0]["prompt"] == "The mother tongue of Danielle Darrieux is"
    assert paraphrased[0]["context"] == "The mother tongue of Danielle Darrieux is English"
    assert paraphrased["prompt"][1:] == [
        "Kelo Vantri is a resident of",
        "The language of Xavi Bornadel is",
        "Mira Talovan is employed by",
    ]
    assert "0 fell back to the rewrite prompt" in caplog.text

    # Training (the loader) and evaluation (one record at a time) build the same samples.
    records = data.load_counterfact_records(ROME_FIXTURE)
    for source, samples in (("paraphrase", paraphrased), ("rewrite", rewritten)):
        assert [dict(data.counterfact_record_sample(r, source)) for r in records] == list(samples)
    assert data.counterfact_record_sample(raw[0]) == paraphrased[0]

    # A record without paraphrases uses its rewrite prompt.
    no_paraphrase = {**raw[1], "case_id": 7, "paraphrase_prompts": []}
    assert (
        data.counterfact_record_sample(no_paraphrase)["prompt"]
        == "Kelo Vantri lives in the city of"
    )

    with pytest.raises(ValueError, match="paraphrase, rewrite"):
        data.load_dataset("counterfact", file=ROME_FIXTURE, prompt_source="generation")
    with pytest.raises(ValueError, match="paraphrase, rewrite"):
        data.counterfact_record_sample(raw[0], prompt_source="first")


# ---------------------------------------------------------------------------------------
# New target equal to the true one: dropped, in both formats.


def test_records_whose_new_target_is_the_true_one_are_dropped(records, tmp_path, caplog):
    easyedit = [records[914], {**records[8100], "target_new": records[8100]["ground_truth"] + " "}]
    rome = json.loads(ROME_FIXTURE.read_text())[:2]
    rome[1]["requested_rewrite"]["target_new"]["str"] = "Oslo"  # its target_true
    with caplog.at_level(logging.WARNING, logger="remedi.data"):
        easyedit_samples = data.load_dataset(
            "counterfact_easyedit", file=_write(tmp_path / "easyedit.json", easyedit)
        )
        rome_records = data.load_counterfact_records(_write(tmp_path / "rome.json", rome))
    assert easyedit_samples["id"] == ["counterfact/914"]
    assert rome_records["case_id"] == [0]
    assert caplog.text.count("1 target_new equals target_true") == 2


# ---------------------------------------------------------------------------------------
# The real files.


@pytest.mark.shared_data
def test_real_easyedit_prompts_keep_their_entity():
    file = env.shared_data_dir() / "counterfact_easyedit" / "counterfact-edit-1k.json"
    if not file.is_file():
        pytest.fail(f"real data file missing: {file} (see ../shared/data/README.md)")
    raw = json.loads(file.read_text())
    samples = data.load_dataset("counterfact_easyedit", file=file)
    assert len(samples) == len(raw)
    changed = 0
    for sample, record in zip(samples, raw, strict=True):
        assert sample["prompt"] == data.clean_counterfact_paraphrase(
            record["subject"], record["rephrase_prompt"]
        )
        assert record["subject"] in sample["prompt"]
        assert "\n" not in sample["prompt"]
        changed += sample["prompt"] != record["rephrase_prompt"]
    assert changed > 0


# ---------------------------------------------------------------------------------------
# The choice is part of a training run's arguments.


def test_run_args_keep_the_prompt_choice_and_refuse_to_resume_with_another(
    gpt2_model, tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    mt = models.ModelAndTokenizer(model=gpt2_model, tokenizer=tokenizer, name="tiny-gpt2")
    args = training.RunArgs(
        name="prompt_choice",
        model="tiny-gpt2",
        dataset_file=str(ROME_FIXTURE),
        layers=[0],
        max_epochs=1,
        test_size=0.25,
        hold_out=0.34,
    )
    assert args.counterfact_prompt == "paraphrase"
    run = training.train_run(args, mt=mt)
    assert training.load_run(run).args.counterfact_prompt == "paraphrase"
    prompts = {
        sample["id"]: sample["prompt"]
        for split in ("train", "validation", "test")
        for sample in training.load_run_samples(run, split)
    }
    assert prompts["counterfact/0"] == "Danielle Darrieux, a native"

    rewrite = training.RunArgs.from_dict({**args.to_dict(), "counterfact_prompt": "rewrite"})
    with pytest.raises(ValueError, match="counterfact_prompt"):
        training.train_run(rewrite, mt=mt)

    # A run saved before the options existed used the rewrite prompt and KL(edited || original):
    # it reads as it was trained, so resuming it with today's defaults is refused, not mixed.
    saved = json.loads((run / training.ARGS_FILE).read_text())
    del saved["args"]["counterfact_prompt"]
    del saved["args"]["kl_direction"]
    (run / training.ARGS_FILE).write_text(json.dumps(saved))
    old = training.load_run(run).args
    assert (old.counterfact_prompt, old.kl_direction) == ("rewrite", "edited||original")
    with pytest.raises(ValueError, match="counterfact_prompt, kl_direction"):
        training.train_run(args, mt=mt)


def test_the_script_and_the_task_pass_the_prompt_choice():
    from scripts import train_editors

    base = ["-n", "run", "-m", "gpt2", "--device", "cpu"]
    assert train_editors.run_args(train_editors.parse_args(base)).counterfact_prompt == (
        "paraphrase"
    )
    chosen = train_editors.parse_args([*base, "--counterfact-prompt", "rewrite"])
    assert train_editors.run_args(chosen).counterfact_prompt == "rewrite"
    with pytest.raises(SystemExit):
        train_editors.parse_args([*base, "--counterfact-prompt", "generation"])

    # The task passes its --prompt to the script (--dry echoes the command, runs nothing).
    command = [sys.executable, "-m", "invoke", "--dry", "x.train.counterfact", "--model", "gpt2"]
    for prompt_args, expected in (([], "paraphrase"), (["--prompt", "rewrite"], "rewrite")):
        task = subprocess.run(
            [*command, *prompt_args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert task.returncode == 0, task.stderr
        assert "scripts.train_editors" in task.stdout
        assert f"--counterfact-prompt {expected}" in task.stdout
