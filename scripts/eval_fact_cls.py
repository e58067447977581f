"""Evaluate REMEDI directions as a probe: do they predict whether the LM mediates a fact?

    python -m scripts.eval_fact_cls -n my_cls -e results/editors_counterfact_gptj \\
        --control-editors-dir results/editors_counterfact_gptj_random -m gptj --entity-layers 26

writes one JSON per (row, entity layer) under ``results/NAME/<row>/cls_entity_layer_<L>.json``
(rows: remedi, remedi_identity, control_task, control_model; a rerun skips finished ones unless
``--rerun``), then ``results/NAME/summary.{md,tex,json,png}`` for the first entity layer and
``summary_entity_layer_<L>.*`` for each. Samples: the held-out (test) split of the editors'
training run. Works on any dataset whose samples have both targets (see
:mod:`remedi.evaluation.probing.classification`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from remedi import cli, editors, models, training
from remedi.evaluation.probing import classification as cls
from remedi.evaluation.probing import mediation, probe_runs
from remedi.report import tables


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="evaluate REMEDI directions as a probe")
    probe_runs.add_arguments(parser, run_help="training run of the editors")
    parser.add_argument(
        "--entity-token",
        choices=("last", "average"),
        default="last",
        help="entity token read: last (the reference's) or average over its tokens",
    )
    return parser.parse_args(argv)


class FactProbe(probe_runs.ProbeSuite[cls.ClassificationResults]):
    """Fact-Med and Fact-Prior classification (:mod:`remedi.evaluation.probing.classification`)."""

    def read_samples(
        self, mt: models.ModelAndTokenizer, samples: list[dict], entity_layers: list[int]
    ) -> Any:
        return mediation.read_samples(mt, samples, entity_layers, self.args.batch_size)

    def classify(
        self,
        mt: models.ModelAndTokenizer,
        probe: editors.Editor,
        samples: list[dict],
        readings: Any,
        *,
        entity_layer: int,
        control_task: bool,
        random_init: bool,
    ) -> cls.ClassificationResults:
        return cls.classification(
            mt,
            probe,
            samples,
            entity_layer=entity_layer,
            entity_token=self.args.entity_token,
            control_task=control_task,
            control_task_seed=self.args.control_task_seed,
            batch_size=self.args.batch_size,
            random_init=random_init,
            readings=readings,
        )

    def describe(self, result: cls.ClassificationResults) -> str:
        metrics = result.metrics
        return (
            f"F1 {metrics.contextual.f1:.3f}/{metrics.decontextual.f1:.3f} "
            f"MCC {metrics.contextual.mcc:.3f}/{metrics.decontextual.mcc:.3f} "
            "(contextual/decontextual)"
        )

    def table(
        self,
        results: dict[str, cls.ClassificationResults],
        record: training.RunRecord,
        entity_layer: int,
    ) -> tables.Table:
        title = f"{self.args.name}: {self.args.model}, classification, entity layer {entity_layer}"
        return cls.classification_table(results, record.args.dataset, title)


def main(argv: Sequence[str] | None = None) -> int:
    print(probe_runs.run_probe(FactProbe(parse_args(argv), cls)).report())
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
