"""Does the edit take, and what does it leave alone? The editing suites.

- :mod:`~remedi.evaluation.editing.counterfact`: CounterFact's efficacy, paraphrase,
  neighborhood, and relation specificity (the toy world's relations, or any CounterFact-format
  dataset's relation templates);
- :mod:`~remedi.evaluation.editing.generation`: fluency, consistency, and the entity's essence;
- :mod:`~remedi.evaluation.editing.biosbias`: Bias in Bios error correction (the occupation in
  generated text, with and without the bio);
- :mod:`~remedi.evaluation.editing.counterfact_report`: the CounterFact tables and bar plot;
- :mod:`~remedi.evaluation.editing.relation_frontier`: efficacy against relation specificity
  over a swept training weight (``lam_rel``).

Each suite judges any :class:`~remedi.evaluation.methods.Method`; the CounterFact and generation
benchmarks run through :mod:`remedi.evaluation.runner`.
"""
