"""How a layer sweep picks its layer: the reference's criteria, their units, the layers they
leave out, what they do when a term was not measured, and what the sweep's files show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remedi import errors, io, sweep
from remedi.evaluation.editing import counterfact_report


def _hmean(*values: float) -> float:
    return len(values) / sum(1 / value for value in values)


def _points(rows: dict[int, dict[str, float | None]]) -> list[sweep.SweepPoint]:
    return [sweep.SweepPoint(layer, dict(metrics)) for layer, metrics in rows.items()]


# CounterFact summary values: shares and similarities in percent, fluency x 100 (our tables).
GEN = {
    0: {"paraphrase": 40.0, "consistency": 20.0, "fluency": 600.0, "score": 50.0},
    1: {"paraphrase": 90.0, "consistency": 10.0, "fluency": 550.0, "score": 85.0},
    2: {"paraphrase": 80.0, "consistency": 30.0, "fluency": 610.0, "score": 80.0},
    3: {"paraphrase": 99.0, "consistency": 35.0, "fluency": 620.0, "score": 99.0},
}


def test_counterfacts_reference_criterion_is_the_hmean_of_three_without_the_last_layer():
    result = sweep.select_layer("gen", _points(GEN), num_layers=4)
    expected = {
        layer: _hmean(row["paraphrase"] / 100, row["consistency"] / 100, row["fluency"] / 100)
        for layer, row in GEN.items()
        if layer != 3
    }
    assert {p.layer: p.criterion for p in result.points} == pytest.approx({**expected, 3: None})
    # Layer 3 is best on every term, but it is the model's last: the reference leaves it out.
    assert result.best_layer == max(expected, key=expected.__getitem__) == 2
    assert result.candidates == [0, 1, 2]
    assert result.terms == ["paraphrase", "consistency", "fluency"]
    assert "Layer 3, the model's last, is not a candidate." in result.notes
    # Ours, ROME's score S, stays a named option: it picks the best score over every layer.
    assert sweep.select_layer("gen", _points(GEN), "rome_score", num_layers=4).best_layer == 3


def test_the_reference_units_matter_the_harmonic_mean_is_not_scale_free():
    # Bias in Bios: top-1 accuracy in percent in our table, fluency an entropy as it is.
    rows = {
        0: {"decontextual.top1_accuracy": 90.0, "decontextual.fluency": 2.0},
        1: {"decontextual.top1_accuracy": 60.0, "decontextual.fluency": 5.0},
        2: {"decontextual.top1_accuracy": 99.0, "decontextual.fluency": 6.0},
    }
    result = sweep.select_layer("gen_biosbias", _points(rows), num_layers=3)
    # In the reference's units (a share, an entropy): hmean(0.9, 2) = 1.24 > hmean(0.6, 5) = 1.07.
    assert result.points[0].criterion == pytest.approx(_hmean(0.9, 2.0))
    assert result.points[1].criterion == pytest.approx(_hmean(0.6, 5.0))
    assert result.best_layer == 0
    # On the table's percent scale the same rule would pick layer 1 (hmean(60, 5) > hmean(90, 2)).
    assert _hmean(60.0, 5.0) > _hmean(90.0, 2.0)
    assert sweep.select_layer("gen_biosbias", _points(rows), "top1").best_layer == 2


def test_a_term_never_measured_is_left_out_and_the_sweep_says_which_it_used():
    # SmolLM2's EasyEdit CounterFact: no attribute snippets, so no consistency.
    rows = {layer: {**row, "consistency": None} for layer, row in GEN.items()}
    result = sweep.select_layer("gen", _points(rows), num_layers=30)
    assert result.terms == ["paraphrase", "fluency"]
    assert result.missing_terms == ["consistency"]
    assert result.points[1].criterion == pytest.approx(_hmean(0.9, 5.5))
    assert result.best_layer == 3  # layer 29 is the last: every swept layer is a candidate
    assert any(
        "left out of the criterion: consistency; it uses paraphrase, fluency" in note
        for note in result.notes
    )
    # Measured at some candidate layers only: left out too, so that layers compare alike.
    rows[2]["consistency"] = 30.0
    assert sweep.select_layer("gen", _points(rows), num_layers=30).missing_terms == ["consistency"]


def test_without_the_number_of_layers_no_layer_is_left_out_and_the_notes_say_so():
    result = sweep.select_layer("gen", _points(GEN))
    assert result.best_layer == 3 and result.candidates == [0, 1, 2, 3]
    assert "The model's number of layers is not known: no layer is left out." in result.notes


def test_classification_chooses_among_entity_layers_from_the_editor_layer_up():
    rows = {layer: {"contextual.f1": f1} for layer, f1 in enumerate([0.9, 0.5, 0.6, 0.4])}
    result = sweep.select_layer("cls", _points(rows), editor_layer=1)
    assert result.best_layer == 2 and result.candidates == [1, 2, 3]
    assert result.points[0].criterion is None
    assert sweep.select_layer("cls", _points(rows)).best_layer == 0  # editor layer unknown
    bios = {layer: {"f1": f1} for layer, f1 in enumerate([0.9, 0.5, 0.6])}
    assert sweep.select_layer("cls_biosbias", _points(bios), editor_layer=2).best_layer == 2


def test_one_term_is_maximised_as_it_is_even_below_zero():
    rows = {layer: {"co.r": r, "co.delta_p": 0.1} for layer, r in enumerate([-0.3, -0.1, -0.2])}
    result = sweep.select_layer("ent", _points(rows))
    assert result.best_layer == 1
    assert [point.criterion for point in result.points] == [-0.3, -0.1, -0.2]


def test_an_unknown_criterion_or_sweep_says_what_exists():
    with pytest.raises(errors.UsageError, match="no criterion 'top1'; use one of reference"):
        sweep.select_layer("gen", _points(GEN), "top1")
    with pytest.raises(errors.UsageError, match="unknown sweep 'nope'"):
        sweep.select_layer("nope", _points(GEN))


def _write_gen_layers(directory: Path, rows: dict[int, dict[str, float | None]]) -> None:
    for layer, values in rows.items():
        summary = counterfact_report.Summary(
            title="t", rows=[counterfact_report.SummaryRow("remedi", "REMEDI", 10, dict(values))]
        )
        io.write_json(sweep.layer_dir(directory, layer) / "summary.json", summary.to_dict())


def test_the_sweeps_files_show_the_criterion_its_values_and_the_chosen_layer(tmp_path, capsys):
    from scripts import sweep_layers

    _write_gen_layers(tmp_path / "results" / "sweep", GEN)
    argv = ["--kind", "gen", "-n", "sweep", "--layers", "0", "1", "2", "3", "--num-layers", "4"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REMEDI_RESULTS_DIR", str(tmp_path / "results"))
        assert sweep_layers.main(argv) == 0
    out = capsys.readouterr().out
    assert "| layer 2 (best) |" in out and "criterion (reference)" in out
    assert "best layer by reference (harmonic mean of paraphrase, consistency and fluency" in out
    experiment = tmp_path / "results" / "sweep"
    stored = sweep.Sweep.from_dict(json.loads((experiment / "sweep_result.json").read_text()))
    assert (stored.criterion, stored.best_layer, stored.candidates) == ("reference", 2, [0, 1, 2])
    assert stored.terms == ["paraphrase", "consistency", "fluency"]
    assert stored.points[3].criterion is None
    table = json.loads((experiment / "sweep.json").read_text())
    assert table["columns"]["criterion"] == "criterion (reference)"
    assert (experiment / "sweep_layers.png").read_bytes()[:4] == b"\x89PNG"
