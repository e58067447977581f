"""End to end on the small toy world: trace facts, edit them for two problems, analyse.

Slow (builds the session's toy-small world): checks the scripts write every file they promise
and that a model that knows its facts shows a tracing effect at the subject.
"""

from __future__ import annotations

import json

import pytest

from remedi import tracing
from scripts import edit_analysis, edit_problems, trace_counterfact
from tests.toy_fixtures import BuiltToyWorld, toy_dirs

pytestmark = pytest.mark.slow


def test_trace_edit_and_analyse_the_toy_world(
    small_world: BuiltToyWorld, tmp_path, monkeypatch, capsys
):
    results = tmp_path / "results"
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(results))
    dataset = ["--dataset-file", str(small_world.paths.counterfact_file), "--device", "cpu"]
    with toy_dirs(small_world.models_dir, small_world.data_dir):
        argv = ["-m", "toy-small", "-n", "3", "--window-sizes", "1", "--kinds", "residual"]
        assert trace_counterfact.main([*argv, *dataset]) == 0
        traced = results / "trace_counterfact_toy-small"
        cases = [
            tracing.TraceResult.from_dict(json.loads(p.read_text()))
            for p in sorted((traced / "cases").glob("*.json"))
        ]
        assert len(cases) == 3
        correct = [case for case in cases if case.correct]
        assert correct, "the toy model should know some of its facts"
        assert (traced / "average_residual_w1.png").is_file()
        # The subject matters: restoring the last layer at the last token recovers the fact.
        for case in correct:
            assert case.indirect_effects("residual", 1)[-1, -1] > 0
        # ROME's average of the same cases, read back (none traced again), in files of its own.
        stamps = {p: p.stat().st_mtime_ns for p in (traced / "cases").glob("*.json")}
        assert trace_counterfact.main([*argv, "--average", "rome", *dataset]) == 0
        assert {p: p.stat().st_mtime_ns for p in (traced / "cases").glob("*.json")} == stamps
        rome_averages = json.loads((traced / "averages_rome.json").read_text())["averages"]
        assert [average["pooling"] for average in rome_averages] == ["token"]
        assert (
            json.loads((traced / "averages.json").read_text())["averages"][0]["pooling"] == "case"
        )

        argv = ["-m", "toy-small", "--method", "ft", "--edit-layer", "0", "-n", "2"]
        argv += ["--problems", "error_injection", "fact_erasure"]
        assert edit_problems.main([*argv, *dataset]) == 0
        edited = results / "edit_problems_toy-small_ft"
        assert sorted(p.name for p in (edited / "error_injection" / "L0").glob("*.json"))
        assert (edited / "r2.md").is_file() and (edited / "success_by_layer.png").is_file()
        with pytest.raises(SystemExit):
            edit_problems.parse_args(["-m", "toy-small", "--method", "nonsense"])

        assert edit_analysis.main(["-m", "toy-small"]) == 0
        assert (results / "edit_analysis_toy-small" / "r2_ft_w1.tex").is_file()
        protocol = json.loads((edited / "protocol.json").read_text())
        assert protocol["name"] == "reference" and protocol["noise_rule"] == "3 sigma"
    assert "R^2 of edit success" in capsys.readouterr().out
