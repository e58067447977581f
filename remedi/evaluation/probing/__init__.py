"""REMEDI as a probe: what do the editor's directions say about what the LM knows?

- :mod:`~remedi.evaluation.probing.mediation`: how often the unedited LM follows a fact in
  context (the labels the classification probes predict);
- :mod:`~remedi.evaluation.probing.classification`: Fact-Med and Fact-Prior, do the directions
  predict what the LM will say;
- :mod:`~remedi.evaluation.probing.bios_classification`: Bios-Med, do they predict its errors;
- :mod:`~remedi.evaluation.probing.entailment`: McRae, does an edit also move the features the
  new fact implies;
- :mod:`~remedi.evaluation.probing.probe_runs`: what the probe scripts share (flags, the editors'
  training runs, the whole run).
- :mod:`~remedi.evaluation.probing.dump`: the editor's directions and the entity's hidden states
  around them, per sample, on disk, to analyse offline.
"""
