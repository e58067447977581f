"""Hand-written samples in the CounterFact sample schema, shared by the editor and precompute tests."""

from __future__ import annotations

# Three samples whose entities, attributes and targets differ in length (one single-word entity).
SAMPLES: list[dict[str, str]] = [
    {
        "id": "counterfact/1",
        "entity": "Kelo Vantri",
        "prompt": "Kelo Vantri lives in the city of",
        "context": "Kelo Vantri lives in the city of Lisbon",
        "attribute": "lives in the city of Lisbon",
        "target_mediated": "Lisbon",
        "target_unmediated": "Oslo",
    },
    {
        "id": "counterfact/2",
        "entity": "Xavi Bornadel",
        "prompt": "The famous singer Xavi Bornadel speaks",
        "context": "The famous singer Xavi Bornadel speaks Norwegian",
        "attribute": "speaks Norwegian",
        "target_mediated": "Norwegian",
        "target_unmediated": "Spanish",
    },
    {
        "id": "counterfact/3",
        "entity": "Mira",
        "prompt": "Mira works as a",
        "context": "Mira works as a painter",
        "attribute": "works as a painter",
        "target_mediated": "painter",
        "target_unmediated": "doctor",
    },
]
