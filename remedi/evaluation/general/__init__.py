"""What editing costs the model elsewhere: general abilities before and after many edits.

- :mod:`~remedi.evaluation.general.abilities`: the harms paper's eight task sets, scored under
  two protocols (the seed repository's and log-likelihood);
- :mod:`~remedi.evaluation.general.harm`: many edits under three edit modes, with checkpoints,
  each scored on the edits and on every task;
- :mod:`~remedi.evaluation.general.harm_report`: each task's score against the number of edits.
"""
