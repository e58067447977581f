"""Sentence splitting that needs no download.

The REMEDI reference splits sentences with spaCy's ``en_core_web_sm`` (a model download). Here
nltk's Punkt runs untrained (``PunktSentenceTokenizer()``: no ``punkt`` data file). It splits
after ``.``, ``?`` and ``!`` (and closing quotes or brackets after them) when whitespace
follows, but not after single-letter initials ("J. R. R. Tolkien") or inside numbers ("3.5").
On the 21,919 ``rephrase_prompt`` of EasyEdit's CounterFact files, cleaning them with
Punkt (:func:`remedi.data.counterfact.clean_counterfact_paraphrase`) gives the same prompt as
the reference's steps with spaCy's ``en_core_web_sm`` 3.8 for all but 14; where the two
splitters differ:

- Punkt knows no abbreviations, so it splits after "F.C.", "Inc.", "D.C." and the like. A
  split inside or right after the entity ("Washington, D.C. | 's twin city") is merged back by
  :func:`rejoin_sentences_on_entity`, with the original characters between the two parts.
- Punkt splits after a period, "?" or "!" followed by a bracket, a quote or a word ("(S.M.)
  Shigeki Maruyama", 'signed "J.F." Liv Glacier', "Yu-Gi-Oh! Massimiliano Fuksas", "S.M.A.S.H.
  Brown, Shipley & Co.") where spaCy does not, so the prompt starts at the entity's sentence
  instead of keeping the text or bracket before it (12 of the 14).
- spaCy's parser also splits text without punctuation; Punkt never does. Once this leaves
  debris in Punkt's prompt ("Bridges The occupation of Dhananjay Singh is"), once it keeps the
  start of the sentence that spaCy cut off ("The founders of And So I Watch You From Afar are
  from the location of").
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from itertools import pairwise

from nltk.tokenize.punkt import PunktSentenceTokenizer


@cache
def _sentence_tokenizer() -> PunktSentenceTokenizer:
    return PunktSentenceTokenizer()


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (untrained Punkt), each with its trailing whitespace.

    The sentences partition the text: ``"".join(split_sentences(text)) == text``.
    """
    starts = [start for start, _ in _sentence_tokenizer().span_tokenize(text)]
    if not starts:
        return [text] if text else []
    starts[0] = 0
    return [text[start:end] for start, end in zip(starts, [*starts[1:], len(text)], strict=True)]


def _split_breaks_entity(entity: str, left: str, right: str) -> bool:
    """Whether splitting ``left | right`` cut ``entity`` in two (or fell right after it)."""
    cut_through = entity not in left and entity not in right and entity in left + right
    return cut_through or left.rstrip().endswith(entity)


def rejoin_sentences_on_entity(entity: str, sentences: Sequence[str]) -> list[str]:
    """Merge neighbouring sentences where the split broke ``entity``, as the reference does.

    A split breaks the entity when the entity is in neither sentence but in the two together,
    or when the left sentence ends with the entity. ``sentences`` partition a text (as from
    :func:`split_sentences`), so merging restores the text between them exactly. The reference
    asserts that at most one split breaks the entity; here every such split is merged, left to
    right (Punkt can split an entity with two abbreviations twice).
    """
    merged = list(sentences)
    while True:
        index = next(
            (
                index
                for index, (left, right) in enumerate(pairwise(merged))
                if _split_breaks_entity(entity, left, right)
            ),
            None,
        )
        if index is None:
            return merged
        merged[index : index + 2] = [merged[index] + merged[index + 1]]
