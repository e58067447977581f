"""The scripts' common runner: logging, ``--debug``, and errors a person can read.

Every script adds the common flags to its parser and hands its ``main`` to :func:`run`::

    parser = argparse.ArgumentParser(...)
    cli.add_arguments(parser)  # --debug, -v/--verbose
    ...
    if __name__ == "__main__":
        sys.exit(cli.run(main))

:func:`run` logs to stderr and to a file per run, ``results/logs/<script>-<time>-<pid>.log``
(see :func:`remedi.env.logs_dir`; created with the run's first message). An expected error
(:data:`EXPECTED_ERRORS`: a :class:`remedi.errors.RemediError`, a missing file, a malformed
dataset, a GPU out of memory) prints its message, which says the fix, and where its traceback
went; the exit code is 2 for bad input (as argparse exits on a bad flag), 1 for a run that
failed on its way. ``--debug`` prints the traceback too. Any other exception is a bug: its
traceback is printed as Python would, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import io
import json
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remedi import data, env, errors, settings
from remedi.report import tables

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # what shells report for a process stopped by Ctrl-C (128 + SIGINT)

LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    errors.RemediError,
    FileNotFoundError,
    data.DatasetFormatError,
    torch.OutOfMemoryError,
)
"""Errors whose message says what to do; any other exception is a bug."""

FAILED_RUN_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError, data.DownloadError)
"""Expected errors of a run whose input was fine (exit 1); the others are bad input (exit 2)."""

FIXES: dict[type[BaseException], str] = {
    torch.OutOfMemoryError: "lower the batch sizes (--batch-size, --precompute-batch-size) or "
    "load the model in half precision (--dtype bfloat16)",
}
"""The fix for expected errors whose message (from torch, Python) does not say it."""

logger = logging.getLogger(__name__)


@dataclass
class _RunState:
    debug: bool = False


# The run in progress, so that parsing --debug inside the script's main reaches run().
_ACTIVE_RUN: ContextVar[_RunState | None] = ContextVar("remedi_cli_run", default=None)


class _FlagAction(argparse.Action):
    """A flag that stores True and then acts at once (while the script parses)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)
        self.on_set()

    def on_set(self) -> None:
        """What the flag does beyond storing True."""


class _DebugAction(_FlagAction):
    """``--debug``: store True, and have the running :func:`run` print tracebacks."""

    def on_set(self) -> None:
        state = _ACTIVE_RUN.get()
        if state is not None:
            state.debug = True


class _VerboseAction(_FlagAction):
    """``-v``: store True, and log remedi's debug messages."""

    def on_set(self) -> None:
        logging.getLogger("remedi").setLevel(logging.DEBUG)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags every script takes: ``--debug`` and ``-v/--verbose``."""
    parser.add_argument(
        "--debug",
        action=_DebugAction,
        help="on an error, print the full traceback (it always goes to the run's log file)",
    )
    parser.add_argument(
        "-v", "--verbose", action=_VerboseAction, help="log remedi's debug messages too"
    )


def add_name_and_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the experiment's name (``-n``, its folder under the results) and the model (``-m``)."""
    parser.add_argument("-n", "--name", required=True, help="experiment name (results/NAME)")
    parser.add_argument("-m", "--model", required=True, help="model name, alias, or directory")


def add_editor_arguments(
    parser: argparse.ArgumentParser, run_help: str = "training run of the editors"
) -> None:
    """Add the flags of a script that evaluates a training run's editors: the experiment's name
    (``-n``), the model (``-m``), the run (``-e``, ``run_help``), the editor layer and type."""
    add_name_and_model_arguments(parser)
    parser.add_argument("-e", "--editors-dir", type=Path, help=run_help)
    parser.add_argument(
        "-l", "--layer", type=int, help="editor layer (default: the run's only one)"
    )
    parser.add_argument(
        "-t", "--editor-type", default="linear", help="editor type (default linear)"
    )


def check_editor_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (as a usage error) an editor layer (``-l``) without the run it selects from."""
    if args.editors_dir is None and args.layer is not None:
        parser.error("-l/--layer selects an editor: pass -e EDITORS_DIR too")


def editor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``remedi`` method's options from the flags of :func:`add_editor_arguments`: the
    training run (``-e``), the editor layer and type."""
    editors_dir = None if args.editors_dir is None else str(args.editors_dir)
    return {"editors_dir": editors_dir, "layer": args.layer, "editor_type": args.editor_type}


def add_hparams_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--hparams METHOD=PATH`` (a method's hyperparameter file in place of its packaged
    one) and ``--set METHOD.FIELD=VALUE`` (one hyperparameter; VALUE is JSON where it parses as
    JSON, else a string), each repeatable. :func:`hparams_options` reads them back."""
    parser.add_argument(
        "--hparams",
        action="append",
        default=[],
        type=_method_and_path,
        metavar="METHOD=PATH",
        help="a method's hyperparameter file in place of its packaged one (e.g. rome=mine.json)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="hparam_overrides",
        type=_hparam_override,
        metavar="METHOD.FIELD=VALUE",
        help="one hyperparameter of a method, VALUE as JSON (e.g. rome.layer=6, "
        "memit.layers=[4,5,6], ft.lr=5e-3); repeatable",
    )


def hparams_options(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The options of ``method`` from :func:`add_hparams_arguments`' flags: ``hparams_path``
    and each ``--set`` field (for :func:`remedi.evaluation.build_method`)."""
    options: dict[str, Any] = {
        field: value for name, field, value in args.hparam_overrides if name == method
    }
    paths = [path for name, path in args.hparams if name == method]
    if paths:
        options["hparams_path"] = paths[-1]
    return options


def check_hparams_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, methods: Sequence[str]
) -> None:
    """Refuse (as a usage error) ``--hparams``/``--set`` for a method that is not evaluated."""
    named = {name for name, _ in args.hparams} | {name for name, *_ in args.hparam_overrides}
    stray = sorted(named - set(methods))
    if stray:
        parser.error(
            f"--hparams/--set name {', '.join(stray)}, which this run does not evaluate "
            f"(methods: {', '.join(methods) or 'none'}); add it to --methods"
        )


def _method_and_path(value: str) -> tuple[str, Path]:
    method, equals, path = value.partition("=")
    if not equals or not method or not path:
        raise argparse.ArgumentTypeError(
            f"expected METHOD=PATH (e.g. rome=mine.json), got {value!r}"
        )
    return method.strip(), Path(path)


def _hparam_override(value: str) -> tuple[str, str, Any]:
    target, equals, text = value.partition("=")
    method, dot, field = target.partition(".")
    if not equals or not dot or not method or not field:
        raise argparse.ArgumentTypeError(
            f"expected METHOD.FIELD=VALUE (e.g. rome.layer=6), got {value!r}"
        )
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    return method.strip(), field.strip(), parsed


def add_device_arguments(
    parser: argparse.ArgumentParser, experiment: str | None = None, dtype_help: str | None = None
) -> None:
    """Add ``--device`` and ``--dtype``: where the model runs and in what precision.

    ``--dtype`` defaults to None: the script loads the model with ``experiment=``, whose
    reference's precision (:data:`remedi.settings.PRECISION`) the help states; ``dtype_help``
    replaces that help (a script whose experiment depends on other flags).
    """
    parser.add_argument("--device", help="e.g. cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", help=dtype_help or settings.dtype_help(experiment))


def add_sample_evaluation_arguments(
    parser: argparse.ArgumentParser, experiment: str | None = settings.REMEDI
) -> None:
    """Add the flags of a script that evaluates a model on a dataset's samples: how many
    (``--max-samples``), where (:func:`add_device_arguments`, for ``experiment``), in what
    batches, whether to recompute finished results, and whether on the randomly initialised
    model."""
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N samples")
    add_device_arguments(parser, experiment)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rerun", action="store_true", help="recompute finished results")
    parser.add_argument("--random", action="store_true", help="the randomly initialised model")


def device(args: argparse.Namespace) -> str:
    """The device ``--device`` names, else ``cuda`` where it is available, else ``cpu``."""
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def add_counterfact_file_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``-d/--dataset`` (the CounterFact file's format, ROME's by default) and
    ``--dataset-file``, for a script that reads CounterFact cases."""
    parser.add_argument(
        "-d",
        "--dataset",
        choices=data.COUNTERFACT_DATASETS,
        default="counterfact",
        help="format of --dataset-file: counterfact (ROME's, default) or counterfact_easyedit",
    )
    parser.add_argument("--dataset-file", type=Path, help="CounterFact file (see --dataset)")


def write_and_show_table(
    table: tables.Table, directory: Path, stem: str, results: Path | None = None
) -> tables.TableFiles:
    """Write ``table`` as ``directory/stem.*`` and print it, then where the ``results`` are (if
    given) and where the table's files went."""
    files = tables.write_table(table, directory, stem)
    print(tables.markdown(table))
    if results is not None:
        print(f"results: {results}")
    print(f"table: {files.markdown} (LaTeX: {files.latex}, plot: {files.plot})")
    return files


def log_path(script: str) -> Path:
    """The log file of a new run of ``script``: ``<logs dir>/<script>-<time>-<pid>.log``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return env.logs_dir() / f"{script}-{stamp}-{os.getpid()}.log"


def is_expected(error: BaseException) -> bool:
    """Whether ``error`` is one a user can fix (its message says how), not a bug."""
    return isinstance(error, EXPECTED_ERRORS)


def exit_code(error: BaseException) -> int:
    """The exit code for an expected error: 1 for a failed run, 2 for bad input."""
    return EXIT_FAILED if isinstance(error, FAILED_RUN_ERRORS) else EXIT_BAD_INPUT


def error_message(error: BaseException) -> str:
    """The error's message and, where the message does not say it, the fix."""
    message = str(error)
    if isinstance(error, KeyError) and len(error.args) == 1:
        message = str(error.args[0])  # KeyError's str() quotes its message like a dict key
    for error_type, fix in FIXES.items():
        if isinstance(error, error_type):
            message += f"\nfix: {fix}"
    return message


class _RunLogFile(logging.FileHandler):
    """A run's log file. It (and its folder) appears with the first message, so ``--help`` or
    a bad flag leaves nothing behind; if it cannot be written, the run goes on without it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", delay=True)
        self.failed = False

    def _open(self) -> io.TextIOWrapper:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        try:
            super().emit(record)
        except OSError as error:  # opening the file (writing errors go to handleError)
            self._give_up(error)

    def handleError(self, record: logging.LogRecord) -> None:
        self._give_up(sys.exc_info()[1])

    def _give_up(self, error: BaseException | None) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"warning: cannot write the log file {self.baseFilename} ({error})\n")


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[_RunLogFile]:
    """Log INFO and up (remedi's DEBUG with -v) to stderr and to ``path``; undo it on exit."""
    root = logging.getLogger()
    remedi_logger = logging.getLogger("remedi")
    saved_levels = root.level, remedi_logger.level
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler(sys.stderr)
    log_file = _RunLogFile(path)
    handlers: list[logging.Handler] = [console, log_file]
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield log_file
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(saved_levels[0])
        remedi_logger.setLevel(saved_levels[1])


def _log_to_file(log_file: _RunLogFile, message: str, error: BaseException | None = None) -> bool:
    """Write one record, with ``error``'s traceback, to the log file only; whether it worked."""
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, (), exc_info)
    log_file.handle(record)
    return not log_file.failed


def run(
    main: Callable[..., int | None],
    argv: Sequence[str] | None = None,
    name: str | None = None,
) -> int:
    """Run a script's ``main`` with logging set up; return its exit code.

    Expected errors become a message on stderr (and the traceback in the log file, and on
    stderr too after ``--debug``); unexpected ones keep their traceback. ``SystemExit`` (e.g.
    argparse's usage errors) passes through unchanged.

    Args:
        main: The script's entry point, called as ``main()`` (it parses ``sys.argv``), or as
            ``main(argv)`` when ``argv`` is given. It returns an exit code or None (0).
        argv: Command-line arguments to pass to ``main`` instead of ``sys.argv``.
        name: The script's name in messages and in its log file's name (default: the name of
            the file that defines ``main``, e.g. ``train_editors``).

    Returns:
        ``main``'s exit code; for an expected error :func:`exit_code` (2 for bad input, 1 for a
        failed run); 1 for any other exception; 130 on Ctrl-C.
    """
    name = name or Path(inspect.getfile(main)).stem
    path = log_path(name)
    state = _RunState()
    token = _ACTIVE_RUN.set(state)
    try:
        with _logging_to(path) as log_file:
            try:
                code = main() if argv is None else main(argv)
            except SystemExit as stop:
                if isinstance(stop.code, str):  # a script's own `raise SystemExit(message)`
                    _log_to_file(log_file, stop.code)
                raise
            except KeyboardInterrupt as interrupt:
                _log_to_file(log_file, "interrupted", interrupt)
                if state.debug:
                    traceback.print_exc()
                sys.stderr.write(f"{name}: interrupted\n")
                return EXIT_INTERRUPTED
            except Exception as error:
                arguments = shlex.join(sys.argv[1:] if argv is None else argv)
                saved = _log_to_file(log_file, f"{name} failed; its arguments: {arguments}", error)
                if not is_expected(error):
                    traceback.print_exc()
                    also = f"; the traceback is also in {path}" if saved else ""
                    sys.stderr.write(f"{name}: unexpected error, probably a bug{also}\n")
                    return EXIT_FAILED
                if state.debug:
                    traceback.print_exc()
                # Written straight to stderr, like argparse's own errors: no log prefix.
                sys.stderr.write(f"{name}: error: {error_message(error)}\n")
                if saved:
                    hint = "" if state.debug else " (--debug prints it here)"
                    sys.stderr.write(f"{name}: the full traceback is in {path}{hint}\n")
                elif not state.debug:
                    sys.stderr.write(f"{name}: rerun with --debug for the full traceback\n")
                return exit_code(error)
    finally:
        _ACTIVE_RUN.reset(token)
    return int(code or 0)
