"""The reference's evaluation rows: which samples of a dataset file the REMEDI reference evaluates.

The reference (github.com/evandez/REMEDI) trains every dataset's editors on the file's first 5,000
rows (``train[:5000]``, its ``scripts/train_editors.py:28``; a share of those held out for early
stopping, line 39) and evaluates every dataset on rows 5,000 to 9,999 (``train[5000:10000]``), or on
rows 5,000 to 5,999 with ``--small`` (``scripts/eval_fact_gen.py:130-134``,
``scripts/eval_fact_cls.py:25-29``, ``scripts/eval_bias_gen.py:24-28``,
``scripts/eval_bias_cls.py:25-29``, ``scripts/eval_entailment.py:48-52``); its layer sweeps pass
``--small`` (``experiments/sweep.py:12,36,46``). Its evaluation rows never overlap its training rows,
but they are not entity-disjoint from them: a CounterFact subject, a first name or a McRae concept
may be on both sides.

A row is a position in the file the reference reads, which is not the same file for every dataset:

- **CounterFact**: the reference reformats ROME's ``counterfact.json`` one record a line and drops
  none (its ``remedi/data.py:219-258``); ROME's file holds case i at position i (cases 0 to
  21,918), so rows 5,000-9,999 are the cases with ids 5,000-9,999. They are selected here by case
  id, which means the same cases in any CounterFact file: in one of EasyEdit's split files, those of
  the reference's cases that it holds (``counterfact-train.json``, 10,000 of the 21,919 cases: 2,295
  of them, 449 with ``--small``). A case our loader drops is not evaluated (of those 2,295, case
  8594, whose new target contains its subject: 2,294 are).
- **Bias in Bios**: the reference's ``biosbias.json`` holds the samples it kept, in the order of the
  pickle's records (its ``remedi/data.py:409-486``); here the loaded samples, in the same order. A
  bio whose sentences Punkt splits otherwise than spaCy (see :mod:`remedi.data.biosbias`) may be kept
  on one side only, which moves every later row by one.
- **McRae**: the reference's ``mcrae.json`` holds the samples in the order of its shuffled feature
  pairs (its ``remedi/data.py:708-712``, Python's global ``random`` seeded 123456, pairs in the
  order of its dicts); ours are shuffled with the same seed by another generator from sorted pairs
  (:mod:`remedi.data.mcrae`), so the same positions hold other samples than the reference's: the
  same share and count of a differently ordered file, not the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from remedi import errors

REFERENCE_ROWS = range(5000, 10000)
"""The rows the reference evaluates (``train[5000:10000]``)."""
REFERENCE_SMALL_ROWS = range(5000, 6000)
"""The rows its ``--small`` evaluates (``train[5000:6000]``), the ones its layer sweeps use."""

_COUNTERFACT_ID_PREFIX = "counterfact/"
# Datasets whose reference rows are case ids (see the module docstring); others are positions.
_BY_CASE_ID = frozenset({"counterfact", "counterfact_easyedit"})


def reference_rows(small: bool = False) -> range:
    """The rows the reference evaluates: 5,000-9,999, or 5,000-5,999 with its ``--small``."""
    return REFERENCE_SMALL_ROWS if small else REFERENCE_ROWS


def counterfact_case_id(sample_id: str) -> int:
    """The case id of a CounterFact sample id (``counterfact/<case_id>``)."""
    prefix, _, number = sample_id.partition(_COUNTERFACT_ID_PREFIX)
    if prefix or not number.lstrip("-").isdigit():
        raise errors.UsageError(
            f"{sample_id!r} is not a CounterFact sample id (counterfact/<case_id>); is the "
            "dataset CounterFact?"
        )
    return int(number)


def describe_reference_split(dataset: str, small: bool = False) -> str:
    """What the reference split of ``dataset`` is, in words (for notes and errors)."""
    rows = reference_rows(small)
    what = "case ids" if dataset in _BY_CASE_ID else "rows"
    flag = " --small" if small else ""
    return (
        f"the reference's{flag} evaluation split ({what} {rows.start}-{rows.stop - 1}, its "
        f"train[{rows.start}:{rows.stop}])"
    )


def reference_split_ids(dataset: str, ids: Sequence[str], small: bool = False) -> list[str]:
    """The sample ids of the reference's evaluation rows of ``dataset``, in file order.

    ``ids`` are every sample id of the dataset file in file order (as its loader returns them).
    CounterFact's rows are case ids; every other dataset's are positions (module docstring). A
    file shorter than the rows' end gives the rows it has, as the reference's slice would.

    Raises:
        UsageError: the file holds none of the rows (a toy or fixture file is too small).
    """
    rows = reference_rows(small)
    if dataset in _BY_CASE_ID:
        chosen = [sample_id for sample_id in ids if counterfact_case_id(sample_id) in rows]
        held = f"no case with an id in {rows.start}-{rows.stop - 1}"
    else:
        chosen = list(ids[rows.start : rows.stop])
        held = f"{len(ids)} samples, none at rows {rows.start}-{rows.stop - 1}"
    if not chosen:
        raise errors.UsageError(
            f"{describe_reference_split(dataset, small)} is empty for this {dataset} file: it "
            f"holds {held}. Evaluate the training run's held-out split instead (--split test)"
        )
    return chosen
