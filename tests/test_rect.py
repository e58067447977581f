"""RECT's baselines (Gu et al. 2024): random zeroing and PCA of a weight update, by name."""

from __future__ import annotations

import pytest
import torch

from remedi import errors
from remedi.methods import rect


def hand_made(rows: int = 8, columns: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and an update of rank 3 (three outer products), float64 for exact checks."""
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    left = torch.randn(rows, 3, generator=generator, dtype=torch.float64)
    right = torch.randn(3, columns, generator=generator, dtype=torch.float64)
    scale = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    return old, (left * scale) @ right


def test_random_zeroing_keeps_an_exact_seeded_share_of_entries():
    old, delta = hand_made(10, 10)
    new = old + delta
    kept = rect.random_zeroing(old, new, 0.2, torch.Generator().manual_seed(3))
    changed = kept.ne(old)
    # ceil(0.2 * 100) = 20 entries carry their whole change, the other 80 are the old weight.
    assert int(changed.sum()) == 20
    assert torch.equal(kept[changed], new[changed])
    assert torch.equal(kept[~changed], old[~changed])
    # 0.25 of 10 x 10 -> 25; a share that is not a whole count rounds up: 0.123 -> 13.
    assert int(rect.random_zeroing(old, new, 0.25).ne(old).sum()) == 25
    assert int(rect.random_zeroing(old, new, 0.123).ne(old).sum()) == 13
    # Seeded: the same seed draws the same entries, another seed others.
    again = rect.random_zeroing(old, new, 0.2, torch.Generator().manual_seed(3))
    other = rect.random_zeroing(old, new, 0.2, torch.Generator().manual_seed(4))
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    assert torch.equal(rect.random_zeroing(old, new, 1.0), new)
    with pytest.raises(errors.UsageError, match=r"random zeroing share must be in \(0, 1\]"):
        rect.random_zeroing(old, new, 1.5)


def test_pca_keeps_the_top_components_of_the_row_centred_update():
    old, delta = hand_made(8, 5)
    new = old + delta
    # ceil(0.2 * min(8, 5)) = 1 component; 0.5 -> 3.
    assert rect.pca_rank(delta.shape, 0.2) == 1
    assert rect.pca_rank(delta.shape, 0.5) == 3
    assert rect.pca_rank(torch.Size([6400, 1600]), 0.2) == 320  # the reference's GPT-2 XL rank
    kept = rect.principal_components(old, new, 0.2) - old
    mean = delta.mean(dim=0, keepdim=True)
    centred = delta - mean
    # What is kept is the row mean plus a rank-one matrix, the best one (Eckart-Young): its
    # error is the centred update's singular values after the first.
    assert torch.linalg.matrix_rank(kept - mean).item() == 1
    singular = torch.linalg.svdvals(centred)
    assert torch.linalg.norm(kept - delta).item() == pytest.approx(
        singular[1:].square().sum().sqrt().item(), rel=1e-9
    )
    # As scikit-learn's PCA reconstructs (fit_transform, then inverse_transform).
    decomposition = pytest.importorskip("sklearn.decomposition")
    pca = decomposition.PCA(n_components=1)
    expected = pca.inverse_transform(pca.fit_transform(delta.numpy()))
    assert torch.allclose(kept, torch.from_numpy(expected), atol=1e-10)
    # Enough components rebuild the update: the centred rank-3 update at 3 components.
    assert torch.allclose(rect.principal_components(old, new, 0.5), new, atol=1e-10)


def test_pca_keeps_a_rank_one_update_whole():
    old, _ = hand_made(8, 5)
    delta = torch.outer(torch.arange(1.0, 9.0), torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0]))
    new = old + delta.double()
    assert torch.allclose(rect.principal_components(old, new, 0.2), new, atol=1e-10)


def test_regularisers_by_name_on_a_methods_weights():
    old, delta = hand_made(10, 10)
    weights = {"a": old, "b": old * 2}
    new = {"a": old + delta, "b": old * 2 + delta}
    for name in rect.REGULARIZERS:
        result = rect.regularize_weights(weights, new, 0.2, name, seed=7)
        assert set(result) == {"a", "b"}
    random_a = rect.regularize_weights(weights, new, 0.2, "random", seed=7)
    # Each weight has its own draw, and the same seed and name give the same one.
    assert torch.equal(random_a["a"], rect.regularize_weights(weights, new, 0.2, "random", 7)["a"])
    assert not torch.equal(random_a["a"].ne(old), random_a["b"].ne(old * 2))
    assert not torch.equal(
        random_a["a"], rect.regularize_weights(weights, new, 0.2, "random", 8)["a"]
    )
    assert torch.equal(
        rect.regularize_weights(weights, new, 0.2, "rect")["a"], rect.regularize(old, old + delta)
    )
    with pytest.raises(errors.UsageError, match="unknown regulariser 'svd'; choose one of rect"):
        rect.regularize_weights(weights, new, 0.2, "svd")
    with pytest.raises(errors.UsageError, match="PCA has no old value for weight"):
        rect.regularize_weights({}, new, 0.2, "pca")
