"""Bias in Bios: the restricted pickle reader, the reference's sample building, the cache, the
toy export, and the error-correction evaluation end to end on the small toy world."""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
from pathlib import Path

import pytest

from remedi import data, errors, io
from remedi.toy import export
from remedi.toy.build import ensure_toy_biosbias, toy_world_paths
from remedi.toy.world import generate_world
from tests.numerics import assert_equal_in_exact_arithmetic, precision_of
from tests.toy_fixtures import BuiltToyWorld, small_world, toy_dirs  # noqa: F401


def _record(name: tuple[str, str, str], raw: str, title: str, **extra: object) -> dict:
    """One record in the official pickle's structure (name is a tuple of parts)."""
    return {
        "path": "crawl/0",
        "URI": "http://example.org/bio",
        "name": name,
        "raw": raw,
        "bio": raw.split(". ", 1)[-1],
        "title": title,
        "gender": "F",
        "start_pos": 0,
        **extra,
    }


RECORDS = [
    # Second sentence kept; "Dr. Jane Ann Smith" -> "Jane"; title with "_".
    _record(
        ("Jane", "Ann", "Smith"),
        "Welcome to my page about me. Dr. Jane Ann Smith is a software engineer at a large "
        "company in Seattle. She likes hiking.",
        "software_engineer",
    ),
    # The kept sentence does not name her: "About Maria: " goes first.
    _record(
        ("Maria", "", "Lopez"),
        "Maria Lopez grew up in Madrid. She has worked as a nurse in three hospitals for twenty "
        "years now.",
        "nurse",
    ),
    # One sentence only: it is kept; "Prof. Chen" -> "Li".
    _record(
        ("Li", "", "Chen"),
        "Prof. Chen teaches physics and chemistry to large classes at the state university.",
        "professor",
    ),
    # The name twice in the kept sentence: dropped.
    _record(
        ("Omar", "", "Haddad"),
        "Hello there friends. Omar Haddad is a dentist and Omar Haddad loves teeth very much.",
        "dentist",
    ),
    # Too short once abridged: dropped.
    _record(("Kim", "", "Park"), "Kim Park is a poet.", "poet"),
    # A blacklisted first name: dropped.
    _record(
        ("Non-Residential", "", "Thing"),
        "Non-Residential Thing is a listing of many things that are not homes at all.",
        "architect",
    ),
    # An empty title: dropped and counted.
    _record(
        ("Sara", "", "Berg"),
        "Sara Berg is somebody whose page says a lot of things about her and her job.",
        "",
    ),
    # The same person again: a unique id.
    _record(
        ("Jane", "Ann", "Smith"),
        "Another page. Jane Smith works on compilers and databases at a large company.",
        "software_engineer",
    ),
]


def _write_pickle(path: Path, records: object) -> Path:
    path.write_bytes(pickle.dumps(records))
    return path


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "data"
    monkeypatch.setenv("REMEDI_DATA_DIR", str(directory))
    return directory


def _files_under(directory: Path) -> list[Path]:
    return (
        sorted(path for path in directory.rglob("*") if path.is_file())
        if directory.exists()
        else []
    )


def test_samples_are_built_as_the_reference(tmp_path, data_dir, caplog):
    source = _write_pickle(tmp_path / "BIOS.pkl", RECORDS)
    with caplog.at_level(logging.WARNING, logger="remedi.data.samples"):
        samples = {row["id"]: row for row in data.load_dataset("biosbias", file=source)}

    assert list(samples) == ["Jane_Ann_Smith", "Maria_Lopez", "Li_Chen", "Jane_Ann_Smith_2"]
    jane = samples["Jane_Ann_Smith"]
    assert jane["entity"] == "Jane"
    assert jane["context"] == "Jane is a software engineer at a large company in Seattle."
    assert jane["attribute"] == "is a software engineer at a large company in Seattle"
    assert jane["prompt"] == "Jane has the occupation of"
    assert jane["target_mediated"] == "software engineer"
    assert jane["target_unmediated"] is None
    assert samples["Maria_Lopez"]["context"] == (
        "About Maria: She has worked as a nurse in three hospitals for twenty years now."
    )
    assert samples["Li_Chen"]["context"] == (
        "Li teaches physics and chemistry to large classes at the state university."
    )
    assert samples["Jane_Ann_Smith_2"]["context"] == (
        "Jane works on compilers and databases at a large company."
    )
    dropped = " ".join(record.getMessage() for record in caplog.records)
    for reason in (
        "1 blacklisted name",
        "1 empty title",
        "1 name more than once",
        "1 context under 10 words",
    ):
        assert reason in dropped
    assert data.load_biosbias_bios(source)["Li_Chen"] == RECORDS[2]["bio"]


def test_json_and_jsonl_exports_give_the_pickles_samples(tmp_path, data_dir):
    from_pickle = data.load_biosbias(_write_pickle(tmp_path / "BIOS.pkl", RECORDS)).to_list()
    as_json = tmp_path / "bios.json"
    as_json.write_text(json.dumps(RECORDS))
    as_jsonl = tmp_path / "bios.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(record) for record in RECORDS) + "\n")
    assert data.load_biosbias(as_json).to_list() == from_pickle
    assert data.load_biosbias(as_jsonl).to_list() == from_pickle


def test_only_the_first_records_are_read_as_the_reference_reads_50000(tmp_path, data_dir):
    import inspect

    source = _write_pickle(tmp_path / "BIOS.pkl", RECORDS)
    # The reference reads the first 50,000 records of BIOS.pkl (its remedi/data.py:378,384).
    assert data.BIOSBIAS_MAX_RECORDS == 50_000
    for loader in (data.load_biosbias, data.load_biosbias_bios):
        default = inspect.signature(loader).parameters["max_records"].default
        assert default == data.BIOSBIAS_MAX_RECORDS
    first_three = data.load_biosbias(source, max_records=3)
    assert first_three["id"] == ["Jane_Ann_Smith", "Maria_Lopez", "Li_Chen"]
    assert set(data.load_biosbias_bios(source, max_records=3)) == set(first_three["id"])
    # The same person's second record is past a limit of 7; ids do not depend on the limit.
    every = data.load_biosbias(source, max_records=None)["id"]
    assert every == ["Jane_Ann_Smith", "Maria_Lopez", "Li_Chen", "Jane_Ann_Smith_2"]
    assert data.load_biosbias(source, max_records=7)["id"] == every[:3]
    assert data.load_biosbias(source, max_records=0)["id"] == every  # 0: all, as None
    assert data.load_biosbias(source)["id"] == every  # 8 records, under the default limit
    with pytest.raises(errors.UsageError, match="0 for all"):
        data.load_biosbias(source, max_records=-1)


def test_a_biosbias_runs_record_limit_is_saved_and_old_runs_read_every_record(tmp_path):
    from remedi import training

    def loaded(**args: object) -> training.RunArgs:
        directory = tmp_path / str(len(list(tmp_path.iterdir())))
        record = {
            "args": {"name": "run", "model": "m", **args},
            "seed": 0,
            "model_name": "m",
            "hidden_size": 8,
            "split": {"train": [], "validation": [], "test": []},
        }
        io.write_json(directory / training.ARGS_FILE, record)
        return training.load_run(directory).args

    new = training.RunArgs(name="run", model="m", dataset="biosbias")
    assert new.dataset_options() == {"max_records": data.BIOSBIAS_MAX_RECORDS}
    assert training.RunArgs(
        name="run", model="m", dataset="biosbias", biosbias_max_records=0
    ).dataset_options() == {"max_records": None}
    assert loaded(dataset="biosbias", biosbias_max_records=3).dataset_options() == {
        "max_records": 3
    }
    # Written before the limit existed: a Bias in Bios run read every record; another
    # dataset's run gets today's default, so that resuming it is not refused for nothing.
    assert loaded(dataset="biosbias").dataset_options() == {"max_records": None}
    assert loaded(dataset="counterfact").biosbias_max_records == data.BIOSBIAS_MAX_RECORDS


def test_the_cache_is_keyed_by_the_source_files_hash(tmp_path, data_dir):
    source = _write_pickle(tmp_path / "BIOS.pkl", RECORDS)
    first = data.load_biosbias(source)
    [cache] = _files_under(data_dir)
    sha256 = io.file_sha256(source)
    assert cache.name == f"samples-{sha256}-first{data.BIOSBIAS_MAX_RECORDS}.json"
    data.load_biosbias(source, max_records=None)
    assert (data_dir / "biosbias" / f"samples-{sha256}.json").is_file()
    for path in _files_under(data_dir):
        if path != cache:
            path.unlink()
    # The cache is what is read back while the source is unchanged...
    stored = json.loads(cache.read_text())
    stored["samples"][0]["context"] = "read from the cache"
    cache.write_text(json.dumps(stored))
    assert data.load_biosbias(source)[0]["context"] == "read from the cache"
    # ... and a changed source file is read again.
    _write_pickle(source, RECORDS[:1])
    again = data.load_biosbias(source)
    assert len(again) == 1 and again[0]["context"] == first[0]["context"]
    assert len(_files_under(data_dir)) == 2


class _RunsACommand:
    """Unpickled normally, this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_naming_a_callable_is_refused_and_nothing_runs(tmp_path, data_dir):
    marker = tmp_path / "PWNED"
    source = _write_pickle(
        tmp_path / "BIOS.pkl", [_record(("A", "", "B"), "x", "y"), _RunsACommand(marker)]
    )
    with pytest.raises(data.UnsafePickleError) as raised:
        data.load_biosbias(source)
    message = str(raised.value)
    assert str(source) in message
    assert f"{os.system.__module__}.system" in message
    assert not marker.exists()
    assert _files_under(data_dir) == []
    # The same bytes, unpickled the ordinary way, do run it: the test would catch a leak.
    if sys.platform != "win32":
        pickle.loads(source.read_bytes())
        assert marker.exists()


def test_a_pickle_with_any_class_is_refused(tmp_path, data_dir):
    source = _write_pickle(tmp_path / "BIOS.pkl", [{**RECORDS[0], "where": Path("/x")}])
    with pytest.raises(data.UnsafePickleError, match="pathlib"):
        data.load_biosbias(source)
    assert _files_under(data_dir) == []


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ({"name": ("A", "", "B")}, "list of Bias in Bios records"),
        ([["A", "B"]], "record 0 is not a dict"),
        ([{"name": ("A", "", "B"), "raw": "text"}], "has no field title"),
        ([RECORDS[0], {**RECORDS[1], "name": "Maria Lopez"}], "record 1 has a name that is not"),
        ([{**RECORDS[0], "raw": None}], "has a raw that is not a string"),
    ],
)
def test_wrong_structure_raises_and_writes_nothing(tmp_path, data_dir, records, match):
    source = _write_pickle(tmp_path / "BIOS.pkl", records)
    with pytest.raises(errors.FileFormatError, match=match):
        data.load_biosbias(source)
    assert _files_under(data_dir) == []


def test_a_file_that_is_not_a_pickle_or_missing_says_so(tmp_path, data_dir):
    broken = tmp_path / "BIOS.pkl"
    broken.write_bytes(pickle.dumps(RECORDS)[:40])
    with pytest.raises(errors.FileFormatError, match="not a readable pickle"):
        data.load_biosbias(broken)
    with pytest.raises(errors.MissingFileError, match="--dataset-file"):
        data.load_biosbias(tmp_path / "absent.pkl")
    assert _files_under(data_dir) == []


def test_toy_export_states_each_occupation_in_the_kept_sentence(tmp_path, data_dir):
    world = generate_world(seed=3, num_entities=12)
    records = export.biosbias_records(world)
    assert records == export.biosbias_records(world)  # seeded by the world
    assert len(records) == export.BIOSBIAS_PER_ENTITY * len(world.entities)
    source = tmp_path / "biosbias.json"
    source.write_text(json.dumps(records))
    samples = data.load_biosbias(source)
    assert len(samples) == len(records)  # nothing dropped
    occupation: dict[str, set[str]] = {entity.name.split()[0]: set() for entity in world.entities}
    for entity in world.entities:
        occupation[entity.name.split()[0]].add(entity.facts["P106"])
    for sample in samples:
        assert sample["prompt"] == f"{sample['entity']} works as a"
        assert sample["target_mediated"] in occupation[sample["entity"]]
        assert f" {sample['target_mediated']} " in sample["context"]
        assert sample["context"].count(sample["entity"]) == 1


def test_a_built_world_without_the_export_gets_it_from_world_json(tmp_path):
    world = generate_world(seed=1, num_entities=8)
    with toy_dirs(tmp_path / "models", tmp_path / "data"):
        paths = toy_world_paths("toy-small")
        paths.data_dir.mkdir(parents=True)
        paths.world_file.write_text(json.dumps(world.to_json()))
        file = ensure_toy_biosbias("toy-small")
        assert file == paths.biosbias_file
        assert json.loads(file.read_text()) == export.biosbias_records(world)


@pytest.mark.slow
def test_eval_on_the_small_toy_world_end_to_end(small_world: BuiltToyWorld, tmp_path, monkeypatch):  # noqa: F811
    from scripts import eval_bias_gen, train_editors

    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    data_dir = tmp_path / "data"
    with toy_dirs(small_world.models_dir, data_dir):
        # The built world's data, copied without its Bias in Bios export, so that the export
        # is generated on demand here (the model's data must all be there: a model without its
        # data is refused, not rebuilt).
        paths = toy_world_paths("toy-small")
        paths.data_dir.mkdir(parents=True)
        for source in small_world.paths.data_files():
            (paths.data_dir / source.name).write_bytes(source.read_bytes())
        assert not paths.biosbias_file.exists()
        file = ensure_toy_biosbias("toy-small")
        common = ["-m", "toy-small", "--device", "cpu"]
        train_editors.main(
            [
                "-n",
                "bios",
                "-d",
                "biosbias",
                "-l",
                "0",
                "--dataset-file",
                str(file),
                "--max-epochs",
                "2",
                "--test-size",
                "0.25",
                "--use-all-entity-tokens",
                *common,
            ]
        )
        argv = [
            "-n",
            "bios_eval",
            "-e",
            str(tmp_path / "results" / "bios"),
            "--max-length",
            "40",
            *common,
        ]
        assert eval_bias_gen.main(argv) == 0
        experiment = tmp_path / "results" / "bios_eval"
        stamps = {path: path.stat().st_mtime_ns for path in experiment.glob("*/*.json")}
        assert len(stamps) == 4  # {unedited, remedi} x {contextual, decontextual}
        assert eval_bias_gen.main(argv) == 0  # resumes: nothing recomputed
        assert stamps == {path: path.stat().st_mtime_ns for path in experiment.glob("*/*.json")}

    summary = json.loads((experiment / "summary.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert set(rows) == {"Baseline", "REMEDI (L0)"}
    for row in rows.values():
        assert row["n"] >= 5
        for setting in ("contextual", "decontextual"):
            assert 0 <= row[setting]["top1_accuracy"] <= row[setting]["topk_accuracy"] <= 100
            assert row[setting]["fluency"] > 0
    for name in ("summary.md", "summary.tex", "summary.png"):
        assert (experiment / name).stat().st_size > 0
    assert "| Baseline |" in (experiment / "summary.md").read_text()


SAMPLES = [
    {
        "id": f"person_{index}",
        "entity": name,
        "prompt": f"{name} has the occupation of",
        "context": f"{name} is a {title} who lives in a small town by the sea.",
        "attribute": f"is a {title} who lives in a small town by the sea",
        "target_mediated": title,
    }
    for index, (name, title) in enumerate(
        [("Ana", "doctor"), ("Bo", "lawyer"), ("Cy", "painter"), ("Di", "doctor")]
    )
]


def test_accuracy_reads_the_labels_first_tokens_at_the_prompts_end(tokenizer, gpt2_model_float64):
    import numpy as np
    import torch

    from remedi import metrics, models, precompute
    from remedi.evaluation import EvalResources, Method
    from remedi.evaluation.editing import biosbias as suite
    from remedi.evaluation.scoring import clean_generated_text, generate_texts

    mt = models.ModelAndTokenizer(model=gpt2_model_float64, tokenizer=tokenizer, name="tiny")
    cases = suite.biosbias_cases(SAMPLES)
    labels = ["doctor", "lawyer", "painter"]
    label_ids = precompute.target_token_ids(tokenizer, labels)
    bios = {sample["id"]: sample["context"] for sample in SAMPLES}
    vectorizer = suite.fit_vectorizer(list(bios.values()))
    references = suite.label_references(cases, bios, vectorizer)
    resources = EvalResources(batch_size=3, max_length=30, top_k=5)
    for setting in suite.SETTINGS:
        queries = [(case, suite.setting_prompt(case, setting)) for case in cases]
        if setting == "contextual":
            assert queries[0][1] == SAMPLES[0]["context"] + "\n\n" + SAMPLES[0]["prompt"]
        # Batched with padding vs each prompt alone: equal in exact arithmetic.
        batched = suite.label_log_probs(mt, Method(), queries, label_ids, batch_size=3)
        for row, (_, prompt) in zip(batched, queries, strict=True):
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            with torch.no_grad():
                alone = torch.log_softmax(gpt2_model_float64(ids).logits[0, -1], -1)[label_ids]
            assert_equal_in_exact_arithmetic(row, alone, precision_of(mt))
        result = suite.error_correction(
            mt, Method(), cases, resources, setting, vectorizer, references
        )
        assert result.labels == labels and result.k == 3
        # The generation is the sampled continuation alone: the same seeded texts minus the prompt.
        texts = generate_texts(mt, Method(), queries, max_length=30, top_k=5, seed=0, batch_size=3)
        for text, case, (_, prompt) in zip(texts, result.cases, queries, strict=True):
            assert text == clean_generated_text(prompt) + case.generation
        for case, row in zip(result.cases, batched, strict=True):
            assert case.predictions[0] == labels[int(np.argmax(row))]
            assert_equal_in_exact_arithmetic(
                case.logp_target, row[labels.index(case.target)], precision_of(mt)
            )
            assert case.fluency == metrics.weighted_n_gram_entropy(case.generation)
        hits = [case.predictions[0] == case.target for case in result.cases]
        assert result.top1_accuracy == sum(hits) / len(hits)
        assert result.topk_accuracy == 1.0  # three labels, k = 3


def test_eval_script_takes_the_reference_rows_of_the_kept_samples(
    tmp_path, data_dir, monkeypatch, tokenizer
):
    from remedi.evaluation.editing import biosbias
    from scripts import eval_bias_gen
    from tests.conftest import save_tiny_gpt2

    source = _write_pickle(tmp_path / "BIOS.pkl", RECORDS)
    model = save_tiny_gpt2(tokenizer, tmp_path / "tiny-model")
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    # Four samples kept of eight records: the reference's rows, scaled down to 2-3.
    monkeypatch.setattr(data.splits, "REFERENCE_ROWS", range(2, 4))
    argv = ["-n", "bios_reference", "-m", str(model), "--dataset-file", str(source)]
    argv += ["--split", "reference", "--settings", "decontextual", "--max-length", "12"]
    assert eval_bias_gen.main([*argv, "--device", "cpu"]) == 0
    experiment = tmp_path / "results" / "bios_reference"
    result = biosbias.read_biosbias_result(
        biosbias.result_path(experiment, "unedited", "decontextual")
    )
    assert result is not None
    # Rows 2-3 of the kept samples, not records 2-3 (record 3 was dropped).
    assert result.sample_ids == ["Li_Chen", "Jane_Ann_Smith_2"]
    summary = json.loads((experiment / "summary.json").read_text())
    assert summary["notes"] == [
        "Samples: the reference's evaluation split (rows 2-3, its train[2:4])."
    ]


# ---------------------------------------------------------------------------------------------
# Generation length: the reference's count (padded batches of 16, stop at end-of-text) by default.


def test_the_references_length_counts_the_longest_prompt_of_each_group_of_16():
    from remedi.evaluation.scoring import new_token_budgets

    lengths = [3, 10, 5] + [4] * 14  # 17 prompts: a group of 16 and one of 1
    padded = new_token_budgets(lengths, 20, "padded-batch")
    assert padded == [10] * 16 + [16]
    assert new_token_budgets(lengths, 20, "own-prompt") == [17, 10, 15] + [16] * 14
    assert new_token_budgets([30, 2], 20, "padded-batch") == [1, 1]  # at least one token


def _cycle_lm(tokenizer, first: int, second: int, end_of_text: bool = True):
    """A tiny GPT-2 that greedily continues any text with ``first second <end-of-text>`` and
    starts over after it (without ``end_of_text``: ``first second first second ...``): its blocks
    add nothing (zero output projections), so each next token reads only the last token's
    embedding, one-hot: after ``first`` comes ``second``, after ``second`` end-of-text, after
    anything else ``first``."""
    import torch

    from remedi import models
    from tests.conftest import tiny_gpt2

    model = tiny_gpt2(tokenizer, tie_word_embeddings=False).double()
    end = tokenizer.eos_token_id
    with torch.no_grad():
        for block in model.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        model.transformer.wpe.weight.zero_()
        embeddings, head = model.transformer.wte.weight, model.lm_head.weight
        embeddings.zero_()
        embeddings[:, 0] = 1.0  # any other token
        for token, axis in ((first, 1), (second, 2), (end, 3)):
            embeddings[token] = 0.0
            embeddings[token, axis] = 1.0
        head.zero_()
        head[first, 0] = head[first, 3] = 1.0  # after any other token, or after end-of-text
        head[second, 1] = 1.0
        head[end if end_of_text else first, 2] = 1.0
    return models.ModelAndTokenizer(model=model, tokenizer=tokenizer, name="cycle")


def test_bias_in_bios_texts_are_as_long_as_the_references_and_end_at_end_of_text(
    tokenizer, tmp_path
):
    from remedi.evaluation import EvalResources, Method
    from remedi.evaluation.editing import biosbias as suite
    from remedi.evaluation.scoring import clean_generated_text, generate_texts
    from scripts import eval_bias_gen

    first, second = (tokenizer(word)["input_ids"][-1] for word in (" the", " a"))
    cases = suite.biosbias_cases(SAMPLES)
    queries = [(case, suite.setting_prompt(case, "contextual")) for case in cases]
    prompts = [prompt for _, prompt in queries]
    encoded = tokenizer(prompts)["input_ids"]
    assert not {ids[-1] for ids in encoded} & {first, second, tokenizer.eos_token_id}
    lengths = [len(ids) for ids in encoded]
    assert len(set(lengths)) > 1  # the shorter prompts get what the longest leaves
    max_length = max(lengths) + 7
    budget = max_length - max(lengths)  # every text of the (one) group of 16, the reference's

    def continuations(mt, generation_length: str) -> list[str]:
        texts = generate_texts(
            mt,
            Method(),
            queries,
            max_length,
            top_k=1,
            batch_size=3,
            generation_length=generation_length,
        )
        return [
            text[len(clean_generated_text(prompt)) :]
            for text, prompt in zip(texts, prompts, strict=True)
        ]

    def decoded(count: int, cycle: list[int]) -> str:
        tokens = (cycle * count)[:count]
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        return tokenizer.decode(tokens)

    args = eval_bias_gen.parse_args(["-n", "x", "-m", "cycle"])
    assert (args.generation_length, args.max_length) == ("padded-batch", 150)  # the default
    # An LM that never ends its text: the count alone. The reference's gives every text what
    # the longest prompt of its group of 16 leaves; ours what its own prompt leaves.
    endless = _cycle_lm(tokenizer, first, second, end_of_text=False)
    assert continuations(endless, "padded-batch") == [decoded(budget, [first, second])] * 4
    assert continuations(endless, "own-prompt") == [
        decoded(max_length - length, [first, second]) for length in lengths
    ]
    # An LM that ends its text after two tokens: the reference's text ends there; ours samples
    # through end-of-text (removed from the text), to its own budget.
    mt = _cycle_lm(tokenizer, first, second)
    cycle = [first, second, tokenizer.eos_token_id]
    assert budget > len(cycle)
    assert continuations(mt, "padded-batch") == [tokenizer.decode([first, second])] * 4
    assert continuations(mt, "own-prompt") == [
        tokenizer.decode((cycle * max_length)[: max_length - length], skip_special_tokens=True)
        for length in lengths
    ]

    # error_correction generates as the resources say, and records it with the result.
    resources = EvalResources(max_length=max_length, top_k=1, generation_length="padded-batch")
    bios = {sample["id"]: sample["context"] for sample in SAMPLES}
    vectorizer = suite.fit_vectorizer(list(bios.values()))
    references = suite.label_references(cases, bios, vectorizer)
    result = suite.error_correction(
        mt, Method(), cases, resources, "contextual", vectorizer, references
    )
    assert [case.generation for case in result.cases] == continuations(mt, "padded-batch")
    assert result.settings.generation_length == "padded-batch"
