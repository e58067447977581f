"""Model editing with canonical examples: run an experiment, a sweep, the report; export the toy task.

    python -m scripts.canon run configs/canon/toy_works_for_lora.yaml
    python -m scripts.canon sweep configs/canon/sweeps/toy_works_for.yaml --executor local
    python -m scripts.canon report results/canon/sweeps/toy_works_for --bound 0.01 --runs 10
    python -m scripts.canon toy-export --out results/canon/toy_data
    python -m scripts.canon seed-sweeps     # regenerate configs/canon/seed_* and sweeps/seed_*

``run`` writes ``result.json`` in the experiment's output dir (a finished one is not rerun
unless ``--rerun``); ``sweep`` runs every unfinished experiment through submitit and prints the
done / running / failed / pending summary; ``report`` picks, per bound (default the seed's three),
task and method, the validation config that improves success most within the bound, runs it on
the test pair ``--runs`` times (seeds 0..N-1), stops each run at the epoch chosen on val and
writes the mean and standard error to ``report-bound<BOUND>.{md,tex,png,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from remedi import canon, cli, env, jobs
from remedi.canon import report, search_space, sweep
from remedi.toy import canonical as toy_canonical
from remedi.toy.build import ensure_toy_world


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="model editing with canonical examples")
    cli.add_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate one experiment")
    run.add_argument("config", type=Path, help="experiment YAML")
    run.add_argument("--rerun", action="store_true", help="replace a finished result")
    run.add_argument("--output-dir", type=Path, help="where to write (default: the config's)")
    run_sweep = commands.add_parser("sweep", help="run a sweep's unfinished experiments")
    run_sweep.add_argument("sweep", type=Path, help="sweep YAML")
    run_sweep.add_argument("--executor", choices=sweep.EXECUTORS, default="local")
    run_sweep.add_argument(
        "--slurm",
        default="",
        help="Slurm resources over the sweep file's slurm: fields, e.g. "
        "'partition=gpu,time=120,cpus=4,mem=16,gpus=1' (time in minutes, mem in GB)",
    )
    run_sweep.add_argument(
        "--status", action="store_true", help="only print the done/running/failed summary"
    )
    make_report = commands.add_parser("report", help="val-selected test table of a sweep")
    make_report.add_argument("directory", type=Path, help="the sweep's output directory")
    make_report.add_argument(
        "--bound",
        type=float,
        action="append",
        help="largest relative increase of the general loss; repeat for several (default: the "
        "seed's leagues 1e-3, 1e-4, 1e-5)",
    )
    make_report.add_argument(
        "--runs",
        type=int,
        default=report.DEFAULT_RUNS,
        help="test runs (seeds 0..N-1) per chosen config, averaged (default: the seed's 10)",
    )
    seed_sweeps = commands.add_parser(
        "seed-sweeps", help="write the seed's sampled search as sweep files (GPT-2)"
    )
    seed_sweeps.add_argument(
        "--out", type=Path, default=Path("configs/canon"), help="folder (default configs/canon)"
    )
    export = commands.add_parser("toy-export", help="write the toy world's canonical task")
    export.add_argument("--world", default="toy", help="toy world name (default toy)")
    export.add_argument("--out", type=Path, help="output folder (default: RESULTS/canon/toy_data)")
    export.add_argument("--people", type=int, default=30, help="people edited per split")
    export.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "run":
        config = canon.load_config(args.config)
        if args.output_dir is not None:
            config.output_dir = str(args.output_dir)
        result = canon.run_experiment(config, rerun=args.rerun)
        for stats in result.epochs:
            print(json.dumps(stats.to_dict()))
        print(f"result: {canon.experiment.output_dir(config) / canon.experiment.RESULT_FILE}")
    elif args.command == "sweep":
        sweep_config, experiments = sweep.load_sweep(args.sweep)
        if args.status:
            states = sweep.sweep_status(experiments)
        else:
            slurm = jobs.parse_slurm_spec(args.slurm, sweep_config.slurm)
            states = sweep.run_sweep(args.sweep, args.executor, slurm=slurm)
        print(f"sweep {args.sweep}: {sweep.status_line(states)}")
        failures = sweep.sweep_failures(experiments)
        for name in states["failed"]:
            print(f"failed: {name}: {failures.get(name, 'no error recorded')}")
        return 1 if states["failed"] else 0
    elif args.command == "report":
        bounds = args.bound or list(canon.SEED_BOUNDS)
        _, written = report.write_report(args.directory, bounds, args.runs)
        for files in written:
            print(files.markdown.read_text(encoding="utf-8"))
            print(f"table: {files.markdown} (LaTeX: {files.latex}); plot: {files.plot}")
    elif args.command == "seed-sweeps":
        for path in search_space.write_seed_sweeps(args.out):
            print(path)
    else:
        paths = ensure_toy_world(args.world)
        out = args.out or env.results_dir() / "canon" / "toy_data"
        world = toy_canonical.load_world(paths.world_file)
        counts = toy_canonical.export_toy_canonical(world, out, args.seed, args.people)
        for name, count in counts.items():
            print(f"{count:6d}  {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
