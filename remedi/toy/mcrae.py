"""Toy feature norms in McRae's format: the toy world's people as concepts, their facts as features.

McRae et al. (2005) asked 30 people to list the features of each concept; a feature's
``Prod_Freq`` is how many did. The toy norms read the world the same way: each person is a
concept ("Giguk_Dodair") and each fact is a feature phrased as McRae phrases features
(``comes_from_Sweden``, ``a_citizen_of_Sweden``, ``speaks_Swedish``, ``writes_in_Swedish``,
``lives_in_Rome``, ``a_writer``, ``works_for_Amazon``), with a seeded production frequency.

The structure that matters is the world's implication: nationality implies language. Every person
from Sweden also speaks Swedish, so the nationality and language features co-occur across
concepts (co-occurrence well above the 0.1 that makes a McRae sample), while residence,
occupation and employer are drawn independently of nationality and co-occur with it only by
chance (below 0.1 with the default 250 people). :func:`remedi.data.load_mcrae` therefore builds
samples such as "A Lorbe Tin comes from Sweden." / "A Lorbe Tin" -> "speaks Swedish", and the
entailment benchmark asks whether an edit stating the nationality raises the language.

:func:`write_mcrae_norms` writes the file with McRae's exact header (all 47 columns of
``CONCS_FEATS_concstats_brm.txt``), tab-separated; the columns the norms define here are filled
(labels, production frequency and rank, CPF and distinctiveness, lengths, feature counts), the
lexical statistics of real words (frequencies, familiarity, phonology) are left empty.
"""

from __future__ import annotations

import csv
import io as text_io
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from remedi import io
from remedi.toy.world import World

MCRAE_HEADER = (
    "Concept", "Feature", "WB_Label", "WB_Maj", "WB_Min", "BR_Label", "Prod_Freq", "Rank_PF",
    "Sum_PF_No_Tax", "CPF", "Disting", "Distinct", "CV_No_Tax", "Intercorr_Str_Tax",
    "Intercorr_Str_No_Tax", "Feat_Length_Including_Spaces", "Phon_1st", "KF", "ln(KF)", "BNC",
    "ln(BNC)", "Familiarity", "Length_Letters", "Length_Phonemes", "Length_Syllables", "Bigram",
    "Trigram", "ColtheartN", "Num_Feats_Tax", "Num_Feats_No_Tax", "Num_Disting_Feats_No_Tax",
    "Disting_Feats_%_No_Tax", "Mean_Distinct_No_Tax", "Mean_CV_No_Tax", "Density_No_Tax",
    "Num_Corred_Pairs_No_Tax", "%_Corred_Pairs_No_Tax", "Num_Func", "Num_Vis_Mot", "Num_VisF&S",
    "Num_Vis_Col", "Num_Sound", "Num_Taste", "Num_Smell", "Num_Tact", "Num_Ency", "Num_Tax",
)  # fmt: skip
"""The header of McRae's ``CONCS_FEATS_concstats_brm.txt``, in order."""


@dataclass(frozen=True)
class FeatureTemplate:
    """How one relation's value becomes a McRae feature, with McRae's labels for its kind."""

    relation_id: str
    template: str
    """The feature with ``{}`` for the value, words joined by underscores as in McRae."""
    wb_label: str
    wb_major: str
    wb_minor: str
    br_label: str
    production: tuple[int, int]
    """Range of Prod_Freq (participants out of 30 who list it), drawn uniformly."""


FEATURE_TEMPLATES = (
    FeatureTemplate("P27", "comes_from_{}", "origin", "s", "or", "encyclopaedic", (15, 30)),
    FeatureTemplate("P27", "a_citizen_of_{}", "associated_entity", "s", "e", "encyclopaedic", (8, 25)),
    FeatureTemplate("P1412", "speaks_{}", "action", "s", "a", "function", (12, 30)),
    FeatureTemplate("P1412", "writes_in_{}", "action", "s", "a", "function", (6, 20)),
    FeatureTemplate("P551", "lives_in_{}", "location", "s", "l", "encyclopaedic", (6, 24)),
    FeatureTemplate("P106", "a_{}", "superordinate", "c", "h", "taxonomic", (10, 30)),
    FeatureTemplate("P108", "works_for_{}", "associated_entity", "s", "e", "encyclopaedic", (5, 18)),
)  # fmt: skip
"""The features of a person, one per template whose relation the person has."""

TOY_MCRAE_FILE_NAME = "mcrae_norms.txt"


def concept_name(entity_name: str) -> str:
    """A person's name as a McRae concept: words joined by underscores."""
    return entity_name.replace(" ", "_")


def norm_rows(world: World, seed: int | None = None) -> list[dict[str, str]]:
    """One McRae row per (person, feature), every column of :data:`MCRAE_HEADER` present.

    Production frequencies are drawn with ``seed`` (default: the world's), so the same world
    gives the same norms.
    """
    rng = random.Random(f"toy-mcrae-{world.seed if seed is None else seed}")
    by_concept: list[tuple[str, list[tuple[str, FeatureTemplate, int]]]] = []
    for entity in world.entities:
        features = [
            (template.template.format(entity.facts[template.relation_id]), template, 0)
            for template in FEATURE_TEMPLATES
            if template.relation_id in entity.facts
        ]
        features = [(name, t, rng.randint(*t.production)) for name, t, _ in features]
        by_concept.append((concept_name(entity.name), features))
    concepts_per_feature = Counter(name for _, features in by_concept for name, _, _ in features)

    rows = []
    for concept, features in by_concept:
        ranks = {
            name: rank
            for rank, (name, _, _) in enumerate(
                sorted(features, key=lambda item: (-item[2], item[0])), start=1
            )
        }
        taxonomic = sum(t.br_label == "taxonomic" for _, t, _ in features)
        sum_no_tax = sum(freq for _, t, freq in features if t.br_label != "taxonomic")
        for name, template, frequency in features:
            cpf = concepts_per_feature[name]
            row = dict.fromkeys(MCRAE_HEADER, "")
            row.update(
                {
                    "Concept": concept,
                    "Feature": name,
                    "WB_Label": template.wb_label,
                    "WB_Maj": template.wb_major,
                    "WB_Min": template.wb_minor,
                    "BR_Label": template.br_label,
                    "Prod_Freq": str(frequency),
                    "Rank_PF": str(ranks[name]),
                    "Sum_PF_No_Tax": "" if template.br_label == "taxonomic" else str(frequency),
                    "CPF": str(cpf),
                    "Disting": "D" if cpf <= 2 else "ND",
                    "Distinct": f"{1 / cpf:.3f}",
                    "Feat_Length_Including_Spaces": str(len(name)),
                    "Length_Letters": str(sum(ch.isalpha() for ch in concept)),
                    "Num_Feats_Tax": str(len(features)),
                    "Num_Feats_No_Tax": str(len(features) - taxonomic),
                    "Num_Func": str(sum(t.br_label == "function" for _, t, _ in features)),
                    "Num_Ency": str(sum(t.br_label == "encyclopaedic" for _, t, _ in features)),
                    "Num_Tax": str(taxonomic),
                }
            )
            if template.br_label != "taxonomic":
                row["Sum_PF_No_Tax"] = str(sum_no_tax)
            rows.append(row)
    return rows


def norms_text(rows: list[dict[str, str]]) -> str:
    """The rows as McRae's file: a header, then one tab-separated line per row ("\\n" ends)."""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=MCRAE_HEADER, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_mcrae_norms(world: World, path: Path, seed: int | None = None) -> Path:
    """Write the toy norms of ``world`` to ``path`` (atomically) in McRae's format."""
    io.write_text(Path(path), norms_text(norm_rows(world, seed)))
    return Path(path)
