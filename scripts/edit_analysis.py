"""Does localization inform editing? Regress edit success on the tracing effect and the layer.

    python -m scripts.edit_analysis -m gpt2-xl --methods rome ft

reads the results of ``scripts.edit_problems`` (``results/edit_problems_<model>_<method>``) and
writes, per (method, edit window) as the reference (``third_party/data-analysis.ipynb``, "R2
values for each method"), the R^2 of edit success on the tracing effect, on the edit layer, and
on both (``r2_<method>_w<window>.{md,tex,json,png}``), and the mean success by layer
(``success_by_layer_<method>_w<window>.*``), under ``results/NAME`` (default
``edit_analysis_<model>``); ``--pooled`` adds the R^2 of all methods pooled (``r2_all.*``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from remedi import cli, env, errors
from remedi.evaluation.locate import analysis, running
from remedi.report import tables


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="R^2 of edit success: tracing vs. layer")
    cli.add_arguments(parser)
    parser.add_argument("-m", "--model", required=True, help="model name the problems ran on")
    parser.add_argument(
        "--methods", nargs="+", help="methods to analyse (default: every one with results)"
    )
    parser.add_argument("--name", help="experiment name (default edit_analysis_<model>)")
    parser.add_argument(
        "--pooled",
        action="store_true",
        help="also the R^2 of all methods and windows pooled (not the reference's analysis)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    slug = args.model.replace("/", "_")
    prefix = f"edit_problems_{slug}_"
    found = {
        path.name[len(prefix) :]: path
        for path in sorted(env.results_dir().glob(prefix + "*"))
        if path.is_dir()
    }
    methods = args.methods or sorted(found)
    missing = [method for method in methods if method not in found]
    if missing or not methods:
        raise errors.MissingFileError(
            f"no editing problem results for {', '.join(missing) or 'any method'} on model "
            f"{args.model!r} under {env.results_dir()}; run them first with\n"
            f"    invoke x.edit.problems --model {args.model} --method METHOD"
        )
    directory = env.results_dir() / (args.name or f"edit_analysis_{slug}")
    everything = []
    for method in methods:
        everything += running.read_results(found[method])
    for (method, window), results in analysis.by_method_and_window(everything).items():
        r2, by_layer = analysis.analyze(results, title=f"{args.model}, {method}, window {window}")
        stem = f"{method}_w{window}"
        for table, name in ((by_layer, f"success_by_layer_{stem}"), (r2, f"r2_{stem}")):
            files = tables.write_table(table, directory, name)
            print(tables.markdown(table))
            print(f"table: {files.markdown} (LaTeX: {files.latex}, plot: {files.plot})\n")
    if args.pooled:
        r2, _ = analysis.analyze(
            everything, title=f"{args.model}, {' + '.join(methods)} pooled", pooled=True
        )
        cli.write_and_show_table(r2, directory, "r2_all")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
