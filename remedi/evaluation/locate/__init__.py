"""The five editing problems of Hase et al. (2023), "Does localization inform editing?".

Each problem asks a weight-editing method (any registered
:class:`~remedi.evaluation.methods.Method` that edits weights) for a different change to the fact
behind a CounterFact rewrite prompt ``(s, r)``, and judges it with its own success metric on that
prompt. The definitions follow the reference code, google/belief-localization; each module cites
the file and function it follows:

=====================  ==============================================  ============================
problem                the edit's objective                            success
=====================  ==============================================  ============================
``error_injection``    raise p(o_new | s, r) (CounterFact's rewrite)   rewrite score of o_new
``tracing_reversal``   raise p(o_noise | s, r), o_noise the top token  rewrite score of o_noise
                       under the noised subject
``fact_erasure``       lower p(o_true | s, r)                          erasure score of o_true
``fact_amplification`` raise p(o_true | s, r)                          rewrite score of o_true
``fact_forcing``       raise p(o_true | s_noise, r): the edit is        rewrite score of o_true
                       computed and judged under the noised subject     under noise
=====================  ==============================================  ============================

The suite's modules, in the order they import each other:

- :mod:`~remedi.evaluation.locate.objectives`: what the edits of erasure and forcing run under
  (unlikelihood on a swapped LM head, the subject's noise);
- :mod:`~remedi.evaluation.locate.setups`: what the unedited model says about a case (targets,
  probabilities, the causal trace), and which cases it knows;
- :mod:`~remedi.evaluation.locate.problems`: each problem's target, objective and success, and
  one edit of one case;
- :mod:`~remedi.evaluation.locate.running`: every problem at every layer, resumable;
- :mod:`~remedi.evaluation.locate.analysis`: the regressions and the tables.
"""
