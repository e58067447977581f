"""Evaluate REMEDI directions as a probe on Bias in Bios: do they predict the LM's errors?

    python -m scripts.eval_bias_cls -n my_bios_cls -e results/editors_biosbias_gptj \\
        --control-editors-dir results/editors_biosbias_gptj_random -m gptj --entity-layers 15

writes one JSON per (row, entity layer) under ``results/NAME/<row>/bios_cls_entity_layer_<L>.json``
(rows: remedi, remedi_identity, control_task, control_model; a rerun skips finished ones unless
``--rerun``), then ``results/NAME/summary.{md,tex,json,png}`` for the first entity layer and
``summary_entity_layer_<L>.*`` for each. Samples: the held-out (test) split of the editors'
training run (see :mod:`remedi.evaluation.probing.bios_classification`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from remedi import cli, editors, models, training
from remedi.evaluation.probing import bios_classification as bios_cls
from remedi.evaluation.probing import probe_runs
from remedi.report import tables


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate REMEDI directions on Bias in Bios")
    probe_runs.add_arguments(parser, run_help="Bias in Bios training run")
    return parser.parse_args(argv)


class BiosProbe(probe_runs.ProbeSuite[bios_cls.BiosClassificationResults]):
    """Bios-Med classification (:mod:`remedi.evaluation.probing.bios_classification`)."""

    dataset = "biosbias"
    train_task = "invoke x.train.biosbias"

    def read_samples(
        self, mt: models.ModelAndTokenizer, samples: list[dict], entity_layers: list[int]
    ) -> tuple[list[str], bios_cls.LabelReadings]:
        """The occupations the samples name, and the LM's readings of their prompts."""
        labels = sorted({sample["target_mediated"] for sample in samples})
        readings = bios_cls.read_label_prompts(
            mt, samples, labels, entity_layers, self.args.batch_size
        )
        return labels, readings

    def classify(
        self,
        mt: models.ModelAndTokenizer,
        probe: editors.Editor,
        samples: list[dict],
        readings: tuple[list[str], bios_cls.LabelReadings],
        *,
        entity_layer: int,
        control_task: bool,
        random_init: bool,
    ) -> bios_cls.BiosClassificationResults:
        labels, label_readings = readings
        return bios_cls.bios_classification(
            mt,
            probe,
            samples,
            entity_layer=entity_layer,
            labels=labels,
            control_task=control_task,
            control_task_seed=self.args.control_task_seed,
            batch_size=self.args.batch_size,
            random_init=random_init,
            readings=label_readings,
        )

    def describe(self, result: bios_cls.BiosClassificationResults) -> str:
        metrics = result.metrics
        return f"F1 {metrics.f1:.3f} MCC {metrics.mcc:.3f} (LM error rate {metrics.label_rate:.2f})"

    def table(
        self,
        results: dict[str, bios_cls.BiosClassificationResults],
        record: training.RunRecord,
        entity_layer: int,
    ) -> tables.Table:
        args = self.args
        title = (
            f"{args.name}: {args.model}, Bias in Bios classification, entity layer {entity_layer}"
        )
        return bios_cls.bios_table(results, title)


def main(argv: Sequence[str] | None = None) -> int:
    print(probe_runs.run_probe(BiosProbe(parse_args(argv), bios_cls)).report())
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
