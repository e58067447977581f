"""Aggregating benchmark tables over runs (e.g. split seeds): mean ± sd per cell, and the script."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from remedi import metrics
from remedi.report import figures, tables
from scripts import summarize_runs


def _table(f1: float, mcc: float | None, note: str) -> tables.Table:
    columns = {"contextual.f1": "Fact-Med F1", "contextual.mcc": "Fact-Med MCC"}
    rows = [
        tables.TableRow("REMEDI", {"contextual.f1": f1, "contextual.mcc": mcc}),
        tables.TableRow("Control Task", {"contextual.f1": 0.5, "contextual.mcc": 0.0}),
    ]
    return tables.Table("run", columns, rows, [note])


def test_tables_aggregate_to_mean_and_standard_deviation_per_cell():
    runs = [_table(0.4, 0.1, "seed 0"), _table(0.6, None, "seed 1"), _table(0.8, 0.3, "seed 0")]
    table = tables.aggregate_tables(runs, title="3 runs")
    remedi, control = table.rows
    assert remedi.values["contextual.f1"] == pytest.approx(0.6)
    assert remedi.spreads["contextual.f1"] == pytest.approx(statistics.stdev([0.4, 0.6, 0.8]))
    # A missing cell is averaged over the runs that have it.
    assert remedi.values["contextual.mcc"] == pytest.approx(0.2)
    assert control.spreads["contextual.f1"] == 0.0
    assert table.notes == ["mean ± standard deviation over 3 runs", "seed 0", "seed 1"]
    markdown = tables.markdown(table)
    assert "| REMEDI | 0.60 ± 0.20 | 0.20 ± 0.14 |" in markdown
    assert r"0.60 $\pm$ 0.20" in tables.latex(table)
    assert tables.Table.from_dict(json.loads(json.dumps(table.to_dict()))) == table


def test_tables_of_different_benchmarks_are_refused():
    other = tables.Table("bios", {"f1": "Bios-Med F1"}, [tables.TableRow("REMEDI", {"f1": 0.3})])
    with pytest.raises(ValueError, match=r"columns.*Bios-Med F1.*one benchmark only"):
        tables.aggregate_tables([_table(0.4, 0.1, "a"), other])
    with pytest.raises(ValueError, match="no tables"):
        tables.aggregate_tables([])


def test_summarize_runs_aggregates_table_runs_from_their_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
    runs = []
    for seed, f1 in enumerate((0.4, 0.8)):
        run = tmp_path / f"cls_s{seed}"
        tables.write_table(_table(f1, 0.1, f"seed {seed}"), run, "summary")
        runs.append(str(run))
    assert summarize_runs.main(["-n", "cls_seeds", *runs]) == 0
    assert "| REMEDI | 0.60 ± 0.28 | 0.10 ± 0.00 |" in capsys.readouterr().out
    written = tables.Table.from_dict(
        json.loads((tmp_path / "results" / "cls_seeds" / "summary.json").read_text())
    )
    assert written.title == "cls_seeds: 2 runs"
    assert written.rows[0].values["contextual.f1"] == pytest.approx(0.6)
    assert (tmp_path / "results" / "cls_seeds" / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_summarize_runs_refuses_a_missing_run_and_mixed_kinds(tmp_path, capsys):
    table_run = tmp_path / "cls"
    tables.write_table(_table(0.4, 0.1, "a"), table_run, "summary")
    with pytest.raises(SystemExit):
        summarize_runs.main(["-n", "x", str(table_run), str(tmp_path / "missing")])
    assert "missing/summary.json does not exist" in capsys.readouterr().err
    editing_run = tmp_path / "gen"
    editing_run.mkdir()
    (editing_run / "summary.json").write_text(json.dumps({"title": "t", "rows": []}))
    with pytest.raises(SystemExit):
        summarize_runs.main(["-n", "x", str(table_run), str(editing_run)])
    assert "mix editing summaries and benchmark tables" in capsys.readouterr().err


def test_an_unaggregated_table_renders_as_before(tmp_path: Path):
    table = _table(0.4, None, "a")
    assert "| REMEDI | 0.40 | n/a |" in tables.markdown(table)
    assert tables.write_table(table, tmp_path, "t").plot.is_file()


def test_mean_and_spread_skip_missing_cells():
    mean, spread = metrics.mean_and_spread([1.0, None, math.nan, 3.0])
    assert mean == pytest.approx(2.0) and spread == pytest.approx(math.sqrt(2.0))
    assert metrics.mean_and_spread([4.0]) == (4.0, None)
    assert metrics.mean_and_spread([None, math.nan]) == (None, None)


def test_latex_prints_labels_and_headers_literally(tmp_path: Path):
    table = tables.Table(
        "t", {"a": "A_1 & {B}"}, [tables.TableRow("50% ~x^2 #1 $\\", {"a": 1.0})], digits=1
    )
    latex = tables.latex(table)
    assert r" & A\_1 \& \{B\} \\" in latex
    assert r"50\% \textasciitilde{}x\textasciicircum{}2 \#1 \$\textbackslash{} & 1.0 \\" in latex


def test_a_figure_is_saved_whole_and_closed(tmp_path: Path):
    plt = figures.pyplot()
    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    path = figures.save(figure, tmp_path / "plots" / "line.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["line.png"]  # no temporary file beside it
    assert figure.number not in plt.get_fignums()
