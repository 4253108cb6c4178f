"""The kNN-vote head: the same votes as scikit-learn's KNeighborsClassifier, in blocks, with one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pictag.errors import PictagError
from pictag.heads import create_head
from pictag.heads import knn as knn_module


def clusters(n: int, classes: int = 5, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[:classes] = torch.arange(classes)
    return F.normalize(centres[labels] + 0.5 * torch.randn(n, dim, generator=g), dim=-1), labels


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_votes_equal_scikit_learn_and_do_not_depend_on_the_block_size(weights, monkeypatch):
    from sklearn.neighbors import KNeighborsClassifier

    points, classes = clusters(340)  # one set of class centres: 300 gallery images, 40 queries
    gallery, labels, queries, truth = points[:300], classes[:300], points[300:], classes[300:]
    head = create_head("knn", k=7, weights=weights).fit(gallery, labels)
    reference = KNeighborsClassifier(7, weights=weights, algorithm="brute").fit(gallery.numpy(), labels.numpy())
    expected = reference.predict_proba(queries.numpy())
    scores = head.scores(queries).numpy()
    np.testing.assert_allclose(np.where(expected > 0, scores, 0), expected, atol=1e-4)
    assert (scores.argmax(1) == truth.numpy()).mean() > 0.5  # 5 overlapping classes: chance is 0.2
    monkeypatch.setattr(knn_module, "BLOCK_ROWS", 32)
    torch.testing.assert_close(head.scores(queries), torch.from_numpy(scores))


def test_bad_gallery_is_a_one_line_error():
    gallery, labels = clusters(6, classes=3)
    with pytest.raises(PictagError, match="--knn-k 10 is more than the gallery's 6 image"):
        create_head("knn", k=10).fit(gallery, labels)
    with pytest.raises(PictagError, match="--knn-k must be at least 1"):
        create_head("knn", k=0)
    with pytest.raises(PictagError, match="uniform or distance"):
        create_head("knn", weights="gaussian")
