"""Statistics corpora by name (toy world, local files, Hugging Face datasets), the toy world of a
model name, and statistics caches that one corpus never shares with another."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest
import torch

from remedi import corpora, env, errors, models
from remedi.methods import stats
from remedi.toy import build
from remedi.toy.corpus import training_documents
from tests.conftest import tiny_gpt2
from tests.toy_fixtures import BuiltToyWorld, toy_dirs

TEXTS = [
    "Mira Talovan lives in the city of Lisbon and works as a doctor.",
    "Kelo Vantri works for Nordavia and lives in Oslo.",
    "The Eiffel Tower is located in Paris, the capital of France.",
]


@pytest.fixture(scope="module")
def mt(tokenizer) -> models.ModelAndTokenizer:
    return models.ModelAndTokenizer(tiny_gpt2(tokenizer), tokenizer, "tiny-gpt2")


def write_records(path: Path, texts: list[str]) -> Path:
    """``texts`` as JSON lines of ``{"text": ...}`` records (with a field the corpus ignores)."""
    lines = [json.dumps({"text": text, "id": index}) for index, text in enumerate(texts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- local files -------------------------------------------------------------------------------


def test_text_files_are_read_one_text_per_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(f"{TEXTS[0]}\n\n  \n{TEXTS[1]}\n{TEXTS[2]}\n", encoding="utf-8")
    corpus = corpora.open_corpus(f"file:{path}")
    assert corpus.texts(10) == TEXTS  # blank lines are no texts
    assert corpus.texts(2) == TEXTS[:2]
    assert corpus.name == f"file:{path.resolve()}"
    assert corpus.key.startswith("file:notes.txt@")


def test_json_lines_and_json_lists_of_records_are_read_by_their_text_field(tmp_path):
    lines = corpora.open_corpus(f"file:{write_records(tmp_path / 'texts.jsonl', TEXTS)}")
    listed = tmp_path / "texts.json"
    listed.write_text(json.dumps([{"text": text} for text in TEXTS]), encoding="utf-8")
    assert lines.texts(5) == TEXTS
    assert corpora.open_corpus(f"file:{listed}").texts(5) == TEXTS


def test_another_json_field_is_read_once_per_distinct_value(tmp_path):
    # BoolQ's records: several questions share one passage; the passages are the texts.
    records = [
        {"question": f"q{number}", "passage": passage}
        for number, passage in enumerate([TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[2], TEXTS[1]])
    ]
    path = tmp_path / "boolq.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    corpus = corpora.open_corpus(f"file:{path}#passage")
    assert corpus.texts(10) == TEXTS
    assert corpus.texts(2) == TEXTS[:2]
    assert corpus.name == f"file:{path.resolve()}#passage"
    # The field is part of the key: another field of the same file is another corpus.
    assert corpus.key != corpora.open_corpus(f"file:{path}#question").key
    assert corpora.open_corpus(f"file:{path}#question").texts(2) == ["q0", "q1"]
    with pytest.raises(errors.UsageError, match="'answer' string field"):
        corpora.open_corpus(f"file:{path}#answer").texts(1)
    (tmp_path / "notes.txt").write_text("a text\n", encoding="utf-8")
    with pytest.raises(errors.UsageError, match=r"#FIELD applies to \.json and \.jsonl"):
        corpora.open_corpus(f"file:{tmp_path / 'notes.txt'}#passage")


def test_a_shared_corpus_is_a_file_under_the_shared_data_folder(tmp_path):
    write_records(tmp_path / "texts" / "some.jsonl", TEXTS)
    with env.overridden(REMEDI_SHARED_DATA=tmp_path):
        corpus = corpora.open_corpus("shared:texts/some.jsonl")
        assert corpus.texts(10) == TEXTS
        assert corpus.key == corpora.open_corpus(f"file:{tmp_path / 'texts/some.jsonl'}").key
        with pytest.raises(errors.MissingFileError, match="REMEDI_SHARED_DATA"):
            corpora.open_corpus("shared:texts/absent.jsonl")


def test_a_save_to_disk_folder_is_read_by_its_text_column(tmp_path):
    datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 2]}).save_to_disk(
        str(tmp_path / "single")
    )
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": TEXTS[1:]}),
            "test": datasets.Dataset.from_dict({"text": TEXTS[:1]}),
        }
    )
    splits.save_to_disk(str(tmp_path / "splits"))
    assert corpora.open_corpus(f"file:{tmp_path / 'single'}").texts(10) == TEXTS
    assert corpora.open_corpus(f"file:{tmp_path / 'splits'}").texts(10) == TEXTS[1:]


def test_a_hugging_face_dataset_is_loaded_by_name_with_load_dataset(tmp_path):
    # A hub dataset cannot be downloaded here; load_dataset reads a local dataset folder by the
    # same call, as it reads a hub name from the cache.
    folder = tmp_path / "my_texts"
    write_records(folder / "train.jsonl", ["", *TEXTS])
    write_records(folder / "test.jsonl", ["a test text, not read"])
    for spec in (str(folder), f"hf:{folder}"):
        corpus = corpora.open_corpus(spec)
        assert corpus.texts(2) == TEXTS[:2]  # the train split; empty texts skipped
        assert corpus.texts(10) == TEXTS
    # A released dataset is keyed by its name (found in a cache without loading it); a local
    # folder also by its files, which can change.
    assert corpora.open_corpus("wikipedia:20200501.en").key == "wikipedia:20200501.en"
    before = corpora.open_corpus(str(folder)).key
    write_records(folder / "train.jsonl", TEXTS[:1])
    assert corpora.open_corpus(str(folder)).key != before


def test_bad_corpora_name_the_problem_and_the_fix(tmp_path, mt):
    with pytest.raises(errors.MissingFileError, match="no corpus file"):
        corpora.open_corpus(f"file:{tmp_path / 'absent.txt'}")
    (tmp_path / "table.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(errors.UsageError, match=r"expected a \.txt"):
        corpora.open_corpus(f"file:{tmp_path / 'table.csv'}")
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(errors.UsageError, match="'text' string field"):
        corpora.open_corpus(f"file:{tmp_path / 'bad.jsonl'}").texts(1)
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    with pytest.raises(errors.UsageError, match=r"broken\.jsonl, line 2, is not valid JSON"):
        corpora.open_corpus(f"file:{tmp_path / 'broken.jsonl'}").texts(1)
    datasets.Dataset.from_dict({"body": TEXTS}).save_to_disk(str(tmp_path / "no_text"))
    with pytest.raises(errors.UsageError, match="no 'text' column"):
        corpora.open_corpus(f"file:{tmp_path / 'no_text'}").texts(1)
    (tmp_path / "plain_folder").mkdir()
    with pytest.raises(errors.UsageError, match="save_to_disk"):
        corpora.open_corpus(f"file:{tmp_path / 'plain_folder'}").texts(1)
    with pytest.raises(errors.UsageError, match="--stats-dataset"):
        corpora.open_corpus(" ")
    with pytest.raises(errors.UsageError, match="is not a toy world's model"):
        corpora.open_corpus("toy", mt.name)
    with (
        pytest.raises(errors.MissingFileError, match="build the world first"),
        env.overridden(REMEDI_DATA_DIR=tmp_path / "data"),
    ):
        corpora.open_corpus("toy:toy-small")


# --- the toy world -----------------------------------------------------------------------------


def test_the_toy_world_of_a_model_is_found_by_its_name(tmp_path):
    with env.overridden(REMEDI_MODELS_DIR=tmp_path / "models", REMEDI_DATA_DIR=tmp_path / "data"):
        for model, world in (
            ("toy", "toy"),
            ("toy-small", "toy-small"),
            ("toy-longtail", "toy-longtail"),
            ("toy-small-gptj", "toy-small-gptj"),
            ("toy-small+random123456", "toy-small"),
        ):
            paths = build.toy_world_of_model(model)
            assert paths is not None and paths.name == world, model
            assert paths.world_file == tmp_path / "data" / world / "world.json"
        built = tmp_path / "models" / "toy-longtail"
        built.mkdir(parents=True)
        found = build.toy_world_of_model(str(built))
        assert found is not None and found.name == "toy-longtail"
        elsewhere = tmp_path / "my-models" / "toy-small"
        elsewhere.mkdir(parents=True)
        for model in ("gpt2-xl", "EleutherAI/gpt-j-6B", str(elsewhere)):
            assert build.toy_world_of_model(model) is None, model
        with pytest.raises(errors.UsageError, match="valid names: toy"):
            build.toy_world_of_model("toy-huge")


def test_the_toy_corpus_is_the_text_of_the_models_own_world(small_world: BuiltToyWorld):
    with toy_dirs(small_world.models_dir, small_world.data_dir):
        by_model = corpora.open_corpus("toy", "toy-small")
        by_name = corpora.open_corpus("toy:toy-small")
        world = build.load_world("toy-small")
    expected = [document.text for document in training_documents(world)]
    assert by_model.texts(10**6) == by_name.texts(10**6) == expected
    assert by_model.name == "toy:toy-small" and by_model.key == by_name.key
    assert by_model.key == f"toy:toy-small@{corpora.texts_key(expected)}"


# --- samples -----------------------------------------------------------------------------------


def test_a_corpus_larger_than_asked_gives_a_seeded_random_sample(tmp_path):
    many = [f"text number {index}" for index in range(60)]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(many) + "\n", encoding="utf-8")
    corpus = corpora.open_corpus(f"file:{path}")
    assert corpus.size() == 60 and corpus.is_sampled(10) and not corpus.is_sampled(60)
    sample = corpus.sample(10, seed=1)
    assert len(set(sample)) == 10 and set(sample) <= set(many) and sample != many[:10]
    assert corpus.sample(10, seed=1) == sample  # the same seed, the same texts
    assert set(corpus.sample(10, seed=2)) != set(sample)  # another seed, other texts
    # ROME's and MEMIT's draw: every position shuffled by random.Random(seed), the first kept;
    # read in corpus order.
    positions = list(range(60))
    random.Random(1).shuffle(positions)
    assert sample == [many[position] for position in sorted(positions[:10])]
    # A corpus no larger than asked: all its texts in order, whatever the seed.
    assert corpus.sample(60, seed=2) == corpus.sample(100, seed=1) == corpus.texts(100) == many


def test_a_datasets_sample_draws_rows_and_leaves_out_the_empty_ones(tmp_path):
    rows = ["" if index % 3 == 0 else f"row {index}" for index in range(30)]
    folder = tmp_path / "rows"
    write_records(folder / "train.jsonl", rows)
    corpus = corpora.open_corpus(str(folder))
    assert corpus.size() == 30  # rows, empty ones included, as ROME's sampler counts them
    drawn = corpora.sampled_positions(30, 12, corpora.SAMPLE_SEED)
    expected = [rows[position] for position in sorted(drawn) if rows[position]]
    assert corpus.sample(12) == expected and len(expected) < 12
    # No more rows than asked: the texts as read before samples were drawn.
    assert corpus.sample(30) == corpus.texts(30) == [row for row in rows if row]


# --- caches ------------------------------------------------------------------------------------


def test_statistics_of_another_corpus_never_reuse_a_cache(mt, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    first = corpora.open_corpus(f"file:{path}")
    computed = stats.second_moment(mt, 0, first, 10, tmp_path / "stats")
    # The same file name with other texts is another corpus: other statistics, another file.
    path.write_text("\n".join(reversed(TEXTS[1:])), encoding="utf-8")
    second = corpora.open_corpus(f"file:{path}")
    assert second.name == first.name and second.key != first.key
    recomputed = stats.second_moment(mt, 0, second, 10, tmp_path / "stats")
    assert not torch.equal(recomputed.moment, computed.moment)
    assert len(list((tmp_path / "stats").rglob("*_mom2.safetensors"))) == 2
    # In-memory texts under one label are told apart by their texts too.
    assert corpora.from_texts("x", TEXTS).key != corpora.from_texts("x", TEXTS[:2]).key
    # A cache file renamed to stand for another corpus is refused by its metadata.
    (cached,) = (tmp_path / "stats").rglob(f"*{first.key.split('@')[1]}*_mom2.safetensors")
    target = stats.stats_file(tmp_path / "stats", mt, 0, second, 10)
    target.unlink()
    cached.rename(target)
    with pytest.raises(errors.MismatchError, match="dataset"):
        stats.second_moment(mt, 0, second, 10, tmp_path / "stats")
