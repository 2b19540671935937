"""cluster_attributions (SpRAy): planted clusters recovered and counted by the eigengap, the
Laplacian spectrum against a dense numpy loop, scikit-learn's spectral clustering, pooling,
determinism, the dataset plots, and errors."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score

import xattr
from xattr import AttributionStatistics
from xattr._src.attribution_clusters import features


def planted(n_clusters, per=15, dim=12, seed=0, spread=0.2):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, dim, generator=g, dtype=torch.float64) * 3
    truth = torch.arange(n_clusters * per) % n_clusters
    return centers[truth] + spread * torch.randn(len(truth), dim, generator=g, dtype=torch.float64), truth


def spectrum_loop(x, n_neighbors):
    """Dense numpy: kNN by a loop over sorted distances, W = (K + K^T)/2, I - D^-1/2 W D^-1/2."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = np.zeros((n, n))
    for i in range(n):
        dist = [(float(np.sqrt(((x[i] - x[j]) ** 2).sum())), j) for j in range(n) if j != i]
        for _, j in sorted(dist)[:n_neighbors]:
            k[i, j] = 1.0
    w = (k + k.T) / 2
    deg = w.sum(1)
    lap = np.eye(n) - w / np.sqrt(np.outer(deg, deg))
    return np.linalg.eigvalsh(lap), w


@settings(max_examples=6, deadline=None)
@given(n_clusters=st.integers(2, 4), seed=st.integers(0, 50))
def test_eigengap_finds_planted_clusters(n_clusters, seed):
    x, truth = planted(n_clusters, seed=seed)
    c = xattr.cluster_attributions(x, n_neighbors=6, generator=seed)
    assert c.n_clusters == n_clusters
    assert adjusted_rand_score(truth.numpy(), c.labels.numpy()) == 1.0
    assert c.eigengap == pytest.approx(float(c.eigenvalues[n_clusters] - c.eigenvalues[n_clusters - 1]))
    gaps = (c.eigenvalues[1:] - c.eigenvalues[:-1])[:8]
    assert int(gaps.argmax()) + 1 == n_clusters
    # the unnormalised rows give the same partition (the planted clusters differ in direction)
    assert adjusted_rand_score(truth.numpy(), xattr.cluster_attributions(x, normalize=False, n_neighbors=6).labels.numpy()) == 1.0


@settings(max_examples=6, deadline=None)
@given(n=st.integers(5, 30), dim=st.integers(1, 5), n_neighbors=st.integers(1, 8), seed=st.integers(0, 100))
def test_spectrum_against_dense_numpy(n, dim, n_neighbors, seed):
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = xattr.cluster_attributions(x, normalize=False, n_neighbors=n_neighbors, max_clusters=3, n_clusters=2)
    ref, _ = spectrum_loop(x, min(n_neighbors, n - 1))
    np.testing.assert_allclose(c.eigenvalues.numpy(), np.clip(ref[: len(c.eigenvalues)], 0, None), atol=1e-10)
    assert len(c.eigenvalues) == 4 and (c.eigenvalues[1:] >= c.eigenvalues[:-1]).all()


def test_disconnected_components_give_zero_eigenvalues():
    x, truth = planted(3, per=8, spread=0.01, seed=2)
    c = xattr.cluster_attributions(x, n_neighbors=3)  # 3 neighbours stay within a cluster of 8
    assert c.eigenvalues[:3].abs().max() < 1e-10 and c.eigenvalues[3] > 0.1
    assert c.n_clusters == 3 and adjusted_rand_score(truth, c.labels) == 1.0


def test_agrees_with_scikit_learn_spectral_clustering():
    x, truth = planted(3, per=20, seed=5, spread=2.0)  # overlapping enough for one connected graph
    c = xattr.cluster_attributions(x, n_clusters=3, n_neighbors=8, normalize=False)
    assert c.eigenvalues[1] > 1e-6  # one zero eigenvalue: connected
    _, w = spectrum_loop(x, 8)
    ref = SpectralClustering(3, affinity="precomputed", random_state=0).fit(w).labels_
    assert adjusted_rand_score(ref, c.labels.numpy()) == 1.0
    assert adjusted_rand_score(truth.numpy(), c.labels.numpy()) == 1.0


def test_labels_means_and_determinism():
    x, _ = planted(3, per=10, seed=1)
    x = torch.cat([x, x[:7]])  # cluster sizes 13, 12, 12
    a = x.reshape(-1, 3, 4)
    c = xattr.cluster_attributions(a, generator=3)
    assert c.counts.tolist() == sorted(c.counts.tolist(), reverse=True) == [13, 12, 12]
    assert c.means.shape == (3, 3, 4) and c.embedding.shape == (37, 2)
    for k in range(3):
        torch.testing.assert_close(c.means[k], sum(a[i] for i in range(37) if c.labels[i] == k) / int(c.counts[k]))
    again = xattr.cluster_attributions(a, generator=torch.Generator().manual_seed(9))
    assert torch.equal(c.labels, again.labels) and torch.equal(c.embedding, again.embedding)
    t1 = xattr.cluster_attributions(a, embedding="tsne", generator=5)
    t2 = xattr.cluster_attributions(a, embedding="tsne", generator=5)
    assert t1.embedding.shape == (37, 2) and torch.equal(t1.embedding, t2.embedding)


def test_pooling_against_loop():
    a = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = features(a, pool=2, normalize=False)
    assert got.shape == (4, 3 * 3)
    summed = a.sum(1)
    for n in range(4):
        cells = []
        for i in range(0, 5, 2):
            for j in range(0, 6, 2):
                block = summed[n, i : i + 2, j : j + 2]  # a partial window at the edge averages what it has
                cells.append(float(block.sum()) / block.numel())
        np.testing.assert_allclose(got[n].numpy(), cells, rtol=1e-12)
    unit = features(a, pool=2)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert features(torch.zeros(2, 3)).abs().sum() == 0  # zero maps stay zero


def test_plots(tmp_path):
    x, _ = planted(2, per=10, dim=16, seed=0)
    imgs = x.reshape(20, 1, 4, 4)
    c = xattr.cluster_attributions(imgs)
    fig = xattr.viz.plot_clusters(c, path=tmp_path / "c.png")
    assert len(fig.axes) == 1 + c.n_clusters and (tmp_path / "c.png").stat().st_size > 0
    assert len(xattr.viz.plot_spectrum(c, path=tmp_path / "s.png").axes) == 1
    stats = AttributionStatistics.from_attributions(imgs, torch.arange(20) % 3, top_k=2)
    assert len(xattr.viz.plot_class_means(stats, path=tmp_path / "m.png").axes) == 3 + 1  # + colour bar
    assert len(xattr.viz.plot_class_means(stats, stat="top_k_frequency", groups=[2], columns=1).axes) == 1 + 1
    tab = AttributionStatistics.from_attributions(x[:, :5], torch.arange(20) % 2)
    assert len(xattr.viz.plot_class_means(tab, feature_names=list("abcde")).axes) == 2
    fig = xattr.viz.plot_importance(tab, top=3, path=tmp_path / "i.png")
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 3
    widths = sorted((p.get_width() for p in fig.axes[0].patches), reverse=True)
    np.testing.assert_allclose(widths, torch.sort(tab.importance, descending=True).values[:3].numpy())
    c_tab = xattr.cluster_attributions(x[:, :5], n_clusters=2)
    assert len(xattr.viz.plot_clusters(c_tab, feature_names=list("abcde")).axes) == 3
    for name in "cmsi":
        assert (tmp_path / f"{name}.png").exists()
    with pytest.raises(ValueError, match="stat"):
        xattr.viz.plot_class_means(stats, stat="median")
    with pytest.raises(ValueError, match="feature_names"):
        xattr.viz.plot_importance(tab, feature_names=["a"])


def test_errors():
    x, _ = planted(2)
    with pytest.raises(ValueError, match="at least 3"):
        xattr.cluster_attributions(x[:2])
    with pytest.raises(ValueError, match="n_clusters"):
        xattr.cluster_attributions(x, n_clusters=0)
    with pytest.raises(ValueError, match="exceeds"):
        xattr.cluster_attributions(x[:4], n_clusters=5)
    with pytest.raises(ValueError, match="n_neighbors"):
        xattr.cluster_attributions(x, n_neighbors=0)
    with pytest.raises(ValueError, match="embedding"):
        xattr.cluster_attributions(x, embedding="umap")
    with pytest.raises(ValueError, match="pool"):
        xattr.cluster_attributions(x, pool=2)
    with pytest.raises(ValueError, match="finite"):
        xattr.cluster_attributions(torch.full((5, 2), float("inf")))
    with pytest.raises(ValueError, match="batched"):
        xattr.cluster_attributions(torch.ones(5))
    with pytest.raises(TypeError, match="generator"):
        xattr.cluster_attributions(x, generator=1.5)
