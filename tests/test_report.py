"""Summary tables: the numbers in the markdown and LaTeX tables are the ones in the result files."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import pytest

from remedi import evaluation, metrics
from remedi.evaluation.editing import counterfact_report


def _metric(values: list[float]) -> metrics.Metric:
    return metrics.Metric.aggregate(values)


def _results(
    efficacy: list[float],
    paraphrase: list[float],
    neighborhood: list[float],
    fluency: list[float],
    method: str = "unedited",
) -> dict[str, evaluation.BenchmarkResult]:
    """Result objects as the benchmarks write them (only the fields the summary reads matter)."""
    settings = evaluation.ResultSettings(
        method=method, method_details={}, model="m", case_ids=[1, 2], seed=0
    )

    def probability(name: str, scores: list[float]) -> evaluation.ProbabilityResults:
        cases = [
            evaluation.CaseProbabilities(case_id=i, prompts=["p"], p_new=[0.5], p_true=[0.5])
            for i in range(len(scores))
        ]
        score = metrics.ScoreAndMagnitude(score=_metric(scores), magnitude=_metric(scores))
        return evaluation.ProbabilityResults(name, settings, score, cases)

    generation = evaluation.GenerationResults(
        "generation", settings, _metric(fluency), _metric([0.25, 0.35]), None, []
    )
    relations = evaluation.RelationSpecificityResults(
        "relation_specificity", settings, True, None, _metric([0.5, 1.0]), _metric([1.0]), []
    )
    essence = evaluation.EssenceResults(
        "essence", settings, _metric([0.1, 0.3]), None, _metric(fluency), []
    )
    return {
        "efficacy": probability("efficacy", efficacy),
        "paraphrase": probability("paraphrase", paraphrase),
        "neighborhood": probability("neighborhood", neighborhood),
        "relation_specificity": relations,
        "generation": generation,
        "essence": essence,
    }


def _latex_cells(latex: str, label: str) -> list[str]:
    row = next(line for line in latex.splitlines() if line.startswith(label))
    return [cell.strip() for cell in row.removesuffix(r" \\").split("&")]


def _cells(markdown: str, label: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_tables_show_the_result_files_numbers_on_romes_scale(tmp_path: Path):
    results = {"unedited": _results([1.0, 0.5], [0.5, 0.25], [1.0, 1.0], [6.0, 6.2])}
    summary = counterfact_report.summarize(results, title="t")
    files = counterfact_report.write_summary(summary, tmp_path)
    headers = ["Method", "N", *(column.header for column in counterfact_report.COLUMNS)]
    cells = dict(zip(headers, _cells(files.markdown.read_text(), "Unedited"), strict=True))
    efficacy, paraphrase, neighborhood = 75.0, 37.5, 100.0
    assert cells["N"] == "2"
    assert cells["Efficacy"] == "75.0" and cells["Paraphrase"] == "37.5"
    assert cells["Neighborhood"] == "100.0"
    # ROME's S: the harmonic mean of the three.
    expected_score = 3 / (1 / efficacy + 1 / paraphrase + 1 / neighborhood)
    assert cells["Score"] == f"{expected_score:.1f}" == "60.0"
    assert cells["Rel. spec."] == "75.0" and cells["Implied"] == "100.0"
    assert cells["Consistency"] == "30.0" and cells["Essence"] == "20.0"
    # Fluency x 100, as ROME's GE column (e.g. 626.6 for GPT-2 XL).
    assert cells["Fluency"] == "610.0" and cells["Ess. fluency"] == "610.0"
    latex_cells = _latex_cells(files.latex.read_text(), "Unedited")
    assert latex_cells[2:] == list(cells.values())[2:]


def test_the_best_value_of_a_column_is_bold_in_latex(tmp_path: Path):
    results = {
        "prefix": _results([1.0, 1.0], [1.0, 0.5], [0.5, 0.5], [5.0, 5.0], "prefix"),
        "unedited": _results([0.0, 0.0], [0.0, 0.5], [1.0, 1.0], [6.0, 6.0]),
    }
    latex = counterfact_report.latex_table(counterfact_report.summarize(results))
    prefix, unedited = _latex_cells(latex, "Prefix"), _latex_cells(latex, "Unedited")
    headers = ["Method", "N", *(column.header for column in counterfact_report.COLUMNS)]
    column = {header: index for index, header in enumerate(headers)}
    assert prefix[column["Efficacy"]] == r"\textbf{100.0}"
    assert unedited[column["Efficacy"]] == "0.0"
    assert unedited[column["Neighborhood"]] == r"\textbf{100.0}"
    assert unedited[column["Fluency"]] == r"\textbf{600.0}"


def test_score_is_zero_when_a_part_is_zero_and_missing_when_a_part_is():
    assert counterfact_report.harmonic_mean([0.0, 50.0, 100.0]) == 0.0
    assert counterfact_report.harmonic_mean([50.0, None, 100.0]) is None
    assert counterfact_report.harmonic_mean([50.0, math.nan, 100.0]) is None
    assert counterfact_report.harmonic_mean([50.0, 50.0, 50.0]) == pytest.approx(50.0)


def test_seeds_aggregate_to_mean_and_standard_deviation(tmp_path: Path):
    seeds = [
        counterfact_report.summarize(
            {"unedited": _results([e, e], [0.5, 0.5], [1.0, 1.0], [6.0, 6.0])}
        )
        for e in (0.5, 0.75, 1.0)
    ]
    summary = counterfact_report.aggregate_summaries(seeds, title="3 seeds")
    assert summary.seeds == 3
    row = summary.rows[0]
    assert row.values["efficacy"] == pytest.approx(75.0)
    assert row.spreads["efficacy"] == pytest.approx(statistics.stdev([50.0, 75.0, 100.0]))
    assert row.spreads["paraphrase"] == 0.0
    scores = [s.rows[0].values["score"] for s in seeds]
    assert row.values["score"] == pytest.approx(statistics.fmean(scores))
    markdown = counterfact_report.markdown_table(summary)
    assert _cells(markdown, "Unedited")[3] == "75.0 ± 25.0"
    assert "over 3 seeds" in markdown and "vary across CPUs" in markdown
    assert re.search(r"75\.0 ± 25\.0", counterfact_report.latex_table(summary))
    with pytest.raises(ValueError, match="no summaries"):
        counterfact_report.aggregate_summaries([])


def test_weight_methods_are_labelled_by_the_registry_and_baselines_by_name():
    rows = counterfact_report.summarize(
        {
            method: _results([1.0], [1.0], [1.0], [6.0], method=method)
            for method in ("rome", "ft5", "kn", "unedited", "prefix")
        }
    ).rows
    assert [row.label for row in rows] == ["ROME", "FT-L (5 layers)", "KN", "Unedited", "Prefix"]
