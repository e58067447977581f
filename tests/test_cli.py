"""The doors fail readably: a message with its fix, an exit code, the traceback kept aside.

Each script runs as a real subprocess on bad input of one kind and must print the message and
its fix without a traceback (exit code 2, as argparse uses for bad input), print the traceback
with ``--debug``, and leave it in the log file its message names. ``cli.run`` itself is tested
in-process: a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from remedi import cli, data, env, errors, models, precompute, training
from remedi.toy.build import toy_world_paths
from scripts import train_editors
from tests.conftest import tiny_gpt2

REPO_ROOT = Path(__file__).resolve().parent.parent
COUNTERFACT_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "counterfact_sample.json"
LOG_LINE = re.compile(r"the full traceback is in (\S+\.log)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random GPT-2 (2 layers) saved with save_pretrained, loadable offline."""
    directory = tmp_path_factory.mktemp("cli") / "tiny-gpt2"
    tiny_gpt2(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_script(
    module: str, *args: str, results: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` offline, with results (and logs) under ``results``."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "REMEDI_RESULTS_DIR": str(results),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


def check_expected_error(
    result: subprocess.CompletedProcess[str], *phrases: str, debug: bool = False
) -> str:
    """Exit code 2, every phrase on stderr, a traceback only with --debug; return the log."""
    assert result.returncode == cli.EXIT_BAD_INPUT, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr
    assert ("Traceback" in result.stderr) == debug, result.stderr
    match = LOG_LINE.search(result.stderr)
    assert match, result.stderr
    log = Path(match.group(1)).read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in log
    assert phrases[0] in log
    return log


def train_argv(model: Path | str, layer: str = "0", *extra: str) -> list[str]:
    """``scripts.train_editors``' arguments for a run named ``run`` of ``model`` at ``layer``."""
    return ["-n", "run", "-m", str(model), "-l", layer, *extra]


def test_unknown_model_offline_says_how_to_use_a_local_copy(tmp_path: Path):
    result = run_script(
        "scripts.train_editors", *train_argv("my-org/no-such-model"), results=tmp_path
    )
    log = check_expected_error(
        result, "cannot load model 'my-org/no-such-model'", "model.save_pretrained(DIR)"
    )
    assert "remedi.models.ModelLoadError" in log
    assert "its arguments: -n run -m my-org/no-such-model -l 0" in log


def test_layer_out_of_range_names_the_valid_layers(tmp_path: Path, model_dir: Path):
    result = run_script("scripts.train_editors", *train_argv(model_dir, "7"), results=tmp_path)
    check_expected_error(result, "layer 7 is out of range", "valid layers are 0..1")
    assert "--debug prints it here" in result.stderr


def test_malformed_dataset_names_the_record_and_the_right_loader(tmp_path: Path, model_dir: Path):
    bad_file = tmp_path / "counterfact.json"
    bad_file.write_text(json.dumps([{"case_id": 0, "prompt": "x", "subject": "y"}]))
    argv = train_argv(model_dir, "0", "--dataset-file", str(bad_file))
    result = run_script("scripts.train_editors", *argv, results=tmp_path / "results")
    log = check_expected_error(result, f"{bad_file} is not CounterFact", "record 0")
    assert "DatasetFormatError" in log


def test_resumed_run_with_changed_arguments_says_which(tmp_path: Path, model_dir: Path):
    argv = train_argv(model_dir, "0", "--dataset-file", str(COUNTERFACT_FIXTURE))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
        earlier = train_editors.run_args(train_editors.parse_args([*argv, "--lr", "0.5"]))
        samples = data.load_dataset("counterfact", file=COUNTERFACT_FIXTURE)
        train, validation, test = training.split_samples(samples, earlier)
        record = training.RunRecord(
            args=earlier,
            seed=earlier.seed,
            model_name=str(model_dir),
            hidden_size=32,
            split=training.RunSplit(train["id"], validation["id"], test["id"]),
        )
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / training.ARGS_FILE).write_text(json.dumps(record.to_dict()))
    result = run_script("scripts.train_editors", *argv, results=tmp_path)
    check_expected_error(result, "holds a run with other settings (lr)", "--clear-results")


def test_a_run_resumes_when_its_file_is_named_by_another_path(tmp_path: Path, model_dir: Path):
    # A task passes the absolute path of a file that a run started by hand named relatively.
    roundabout = COUNTERFACT_FIXTURE.parent / ".." / COUNTERFACT_FIXTURE.parent.name
    argv = train_argv(model_dir, "0", "--dataset-file", str(roundabout / COUNTERFACT_FIXTURE.name))
    args = train_editors.run_args(train_editors.parse_args(argv))
    samples = data.load_dataset("counterfact", file=COUNTERFACT_FIXTURE)
    train, validation, test = training.split_samples(samples, args)
    split = training.RunSplit(train["id"], validation["id"], test["id"])

    def record(run_args: training.RunArgs) -> training.RunRecord:
        return training.RunRecord(run_args, run_args.seed, str(model_dir), 32, split)

    same_file = dataclasses.replace(args, dataset_file=str(COUNTERFACT_FIXTURE))
    training.runs._check_resumable(record(args), record(same_file), tmp_path)
    other_file = dataclasses.replace(args, dataset_file=str(tmp_path / "counterfact.json"))
    with pytest.raises(errors.MismatchError, match=r"other settings \(dataset_file\)"):
        training.runs._check_resumable(record(args), record(other_file), tmp_path)


def test_eval_of_a_missing_run_says_to_train_it_and_debug_shows_the_traceback(
    tmp_path: Path, model_dir: Path
):
    missing = tmp_path / "no-run"
    args = ["-n", "eval", "-e", str(missing), "-m", str(model_dir), "--debug"]
    result = run_script("scripts.eval_fact_gen", *args, results=tmp_path)
    check_expected_error(
        result, f"no training run at {missing}", "scripts.train_editors", debug=True
    )
    assert "remedi.errors.MissingFileError" in result.stderr
    assert "--debug prints it here" not in result.stderr


def test_build_toy_with_a_corrupt_build_report_says_so(tmp_path: Path):
    models_dir, data_dir = tmp_path / "models", tmp_path / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REMEDI_MODELS_DIR", str(models_dir))
        patch.setenv("REMEDI_DATA_DIR", str(data_dir))
        paths = toy_world_paths("toy-small")
    # Every file of a finished build, but a build report cut off mid-write.
    for file in (
        paths.model_dir / "config.json",
        paths.model_dir / "tokenizer.json",
        *paths.data_files(),
    ):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("{}")
    paths.report_file.write_text('{"seed": 0,')
    result = run_script(
        "scripts.build_toy",
        "--small",
        results=tmp_path / "results",
        env={"REMEDI_MODELS_DIR": str(models_dir), "REMEDI_DATA_DIR": str(data_dir)},
    )
    check_expected_error(result, f"toy build report {paths.report_file} is not valid JSON")


def test_bad_flag_is_argparse_usage_error_and_writes_no_log(tmp_path: Path):
    result = run_script(
        "scripts.train_editors", "-n", "run", "-m", "x", "--no-such-flag", results=tmp_path
    )
    assert result.returncode == cli.EXIT_BAD_INPUT
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("logs/*.log"))


def test_invoke_task_exits_with_the_scripts_code_and_message(tmp_path: Path, model_dir: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "x.train.counterfact",
            "--model",
            str(model_dir),
            "--layer",
            "7",
            "--device",
            "cpu",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "REMEDI_RESULTS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == cli.EXIT_BAD_INPUT, result.stderr
    assert "layer 7 is out of range" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# cli.run in-process.


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REMEDI_LOGS_DIR", str(tmp_path))
    return tmp_path


def raising(error: BaseException):
    def main(argv: list[str]) -> int:
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        parser.parse_args(argv)
        raise error

    return main


def test_a_bug_keeps_its_traceback(logs: Path, capsys: pytest.CaptureFixture[str]):
    code = cli.run(raising(RuntimeError("index mix-up")), [], name="script")
    stderr = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert "Traceback (most recent call last)" in stderr
    assert "RuntimeError: index mix-up" in stderr
    assert "unexpected error, probably a bug" in stderr
    (log,) = logs.glob("script-*.log")
    assert "RuntimeError: index mix-up" in log.read_text()


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (errors.UsageError("layer 9 is out of range; use 0..1"), 2, "layer 9 is out of range"),
        (FileNotFoundError(2, "No such file or directory", "x.json"), 2, "x.json"),
        (data.DatasetFormatError("not CounterFact; use -d counterfact"), 2, "-d counterfact"),
        (errors.UnknownIdError("3 ids are not in the dataset"), 2, ": 3 ids are not"),
        (torch.OutOfMemoryError("CUDA out of memory"), 1, "fix: lower the batch sizes"),
    ],
)
def test_expected_errors_are_one_message_and_an_exit_code(
    logs: Path, capsys: pytest.CaptureFixture[str], error: Exception, code: int, message: str
):
    assert cli.run(raising(error), [], name="script") == code
    stderr = capsys.readouterr().err
    assert stderr.startswith("script: error: ")
    assert message in stderr
    assert "Traceback" not in stderr
    (log,) = logs.glob("script-*.log")
    assert f"the full traceback is in {log}" in stderr
    assert "Traceback" in log.read_text()


def test_debug_flag_prints_the_traceback(logs: Path, capsys: pytest.CaptureFixture[str]):
    code = cli.run(raising(errors.MismatchError("other settings")), ["--debug"], name="script")
    stderr = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert "Traceback (most recent call last)" in stderr
    assert "script: error: other settings" in stderr


def test_interrupt_is_one_line(logs: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.run(raising(KeyboardInterrupt()), [], name="script") == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "script: interrupted\n"


def test_run_returns_mains_code_and_restores_logging(logs: Path):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def main(argv: list[str]) -> int:
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        parser.parse_args(argv)
        logging.getLogger("remedi.test").debug("only with -v")
        return 3

    assert cli.run(main, ["-v"], name="script") == 3
    assert root.handlers == handlers and root.level == level
    (log,) = logs.glob("script-*.log")
    assert "only with -v" in log.read_text()


def test_a_run_that_logs_nothing_leaves_no_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("REMEDI_LOGS_DIR", str(tmp_path / "logs"))
    assert cli.run(lambda: None, None, name="quiet") == 0
    assert not (tmp_path / "logs").exists()


def test_an_unwritable_log_does_not_hide_the_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("REMEDI_LOGS_DIR", str(tmp_path / "a-file" / "logs"))
    code = cli.run(raising(errors.UsageError("layer 9 is out of range")), [], name="script")
    stderr = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert "warning: cannot write the log file" in stderr
    assert "script: error: layer 9 is out of range" in stderr
    assert "rerun with --debug for the full traceback" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("error_type", "old_base"),
    [
        (errors.UsageError, ValueError),
        (errors.FileFormatError, ValueError),
        (errors.MismatchError, ValueError),
        (errors.SampleError, ValueError),
        (errors.MissingFileError, FileNotFoundError),
        (errors.UnknownIdError, KeyError),
        (models.ModelLoadError, OSError),
        (models.UnsupportedModelError, ValueError),
    ],
)
def test_expected_errors_keep_their_old_base(error_type: type, old_base: type):
    assert issubclass(error_type, errors.RemediError)
    assert issubclass(error_type, old_base)


def test_entity_missing_from_its_prompt_is_a_sample_error():
    with pytest.raises(errors.SampleError, match="every prompt must mention its entity"):
        precompute.find_char_spans(["Paris is in France"], ["Obama"], names=["counterfact/1"])


def test_logs_dir_follows_the_results_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("REMEDI_LOGS_DIR", raising=False)
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path))
    assert env.logs_dir() == tmp_path / "logs"
