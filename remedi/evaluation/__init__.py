"""Evaluation: how well a method edits, what it leaves alone, and what it costs.

Grouped by the question a suite asks; what every suite shares sits at the top:

- :mod:`~remedi.evaluation.cases`: what is evaluated (CounterFact cases), the resources beside
  the model, and the settings each result records;
- :mod:`~remedi.evaluation.methods`: the :class:`Method` interface through which these suites
  judge any method of :data:`remedi.methods.registry.METHODS` (text, hidden states, or weights
  restored exactly), built by name with :func:`build_method`;
- :mod:`~remedi.evaluation.scoring`: batched LM computations with a method attached;
- :mod:`~remedi.evaluation.runner`: the CounterFact benchmark registry (:data:`BENCHMARKS`),
  result files, resuming, collecting.

The suites, one subpackage per question:

- :mod:`~remedi.evaluation.editing`: does the edit take and what does it leave alone
  (CounterFact, generation, Bias in Bios error correction, the CounterFact report);
- :mod:`~remedi.evaluation.probing`: REMEDI as a probe (mediation, Fact-Med/Fact-Prior and
  Bios-Med classification, McRae entailment, the probe scripts' shared run);
- :mod:`~remedi.evaluation.locate`: does localization inform editing (Hase et al.'s five editing
  problems: objectives, case setups, running, regressions);
- :mod:`~remedi.evaluation.general`: what many edits cost (general-ability tasks, harm runs and
  their report).

Imports run one way: ``cases`` <- ``methods`` <- ``scoring`` <- the suites <- ``runner`` (and the
CounterFact report, which reads what it writes); a suite
imports the shared modules, never another question's subpackage. Methods never know how they are
judged: nothing in ``editors``, ``training`` or a method's own module imports a suite.

This package re-exports the shared names and the CounterFact suite's (``evaluation.efficacy``,
``evaluation.BENCHMARKS``, ...); the other suites are imported by their module
(``from remedi.evaluation.probing import classification``).
"""

from remedi.evaluation.cases import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_TARGET_SCORING,
    GENERATION_BATCH_FACTOR,
    GENERATION_LENGTHS,
    GENERATION_MAX_LENGTH,
    GENERATION_TOP_K,
    TARGET_SCORINGS,
    EvalCase,
    EvalResources,
    ResultSettings,
    counterfact_cases,
    dataset_notes,
    first_cases,
    load_resources,
    result_settings,
)
from remedi.evaluation.editing.counterfact import (
    CaseProbabilities,
    ProbabilityResults,
    RelationSpecificityResults,
    efficacy,
    neighborhood,
    paraphrase,
    relation_specificity,
    unscored_method_notes,
)

# The benchmark function ``generation`` is ``evaluation.editing.generation.generation`` (or
# ``BENCHMARKS["generation"]``): the name here would hide nothing, but stays the module's.
from remedi.evaluation.editing.generation import (
    EssenceResults,
    GenerationResults,
    essence,
    essence_prompt,
)
from remedi.evaluation.methods import (
    Method,
    RemediMethod,
    TextMethod,
    WeightEditMethod,
    applicable_cases,
    build_method,
    edit_request,
    find_replacements,
    judged_methods,
    mention_token_ranges,
)
from remedi.evaluation.runner import (
    BENCHMARKS,
    RESULT_TYPES,
    BenchmarkResult,
    collect_results,
    read_result,
    result_file,
    run_benchmarks,
)
from remedi.evaluation.scoring import (
    TopKSampler,
    clean_generated_text,
    generate_texts,
    next_token_predictions,
    target_log_probs,
)

__all__ = [
    "BENCHMARKS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TARGET_SCORING",
    "GENERATION_BATCH_FACTOR",
    "GENERATION_LENGTHS",
    "GENERATION_MAX_LENGTH",
    "GENERATION_TOP_K",
    "RESULT_TYPES",
    "TARGET_SCORINGS",
    "BenchmarkResult",
    "CaseProbabilities",
    "EssenceResults",
    "EvalCase",
    "EvalResources",
    "GenerationResults",
    "Method",
    "ProbabilityResults",
    "RelationSpecificityResults",
    "RemediMethod",
    "ResultSettings",
    "TextMethod",
    "TopKSampler",
    "WeightEditMethod",
    "applicable_cases",
    "build_method",
    "clean_generated_text",
    "collect_results",
    "counterfact_cases",
    "dataset_notes",
    "edit_request",
    "efficacy",
    "essence",
    "essence_prompt",
    "find_replacements",
    "first_cases",
    "generate_texts",
    "judged_methods",
    "load_resources",
    "mention_token_ranges",
    "neighborhood",
    "next_token_predictions",
    "paraphrase",
    "read_result",
    "relation_specificity",
    "result_file",
    "result_settings",
    "run_benchmarks",
    "target_log_probs",
    "unscored_method_notes",
]
