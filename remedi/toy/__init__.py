"""The toy world: a seeded synthetic knowledge base, a tiny LM that knows it, and its datasets.

- :mod:`remedi.toy.world`: the relation registry, invented entities, biographies;
- :mod:`remedi.toy.corpus`: the LM's training text and the tokenizer's;
- :mod:`remedi.toy.tokenizer`: a byte-level BPE tokenizer trained locally;
- :mod:`remedi.toy.lm`: the architecture registry, training and fact recall;
- :mod:`remedi.toy.export`: CounterFact and its consistency companions in ROME's formats;
- :mod:`remedi.toy.build`: builds a named world end to end (``ensure_toy_world("toy")``).
"""
