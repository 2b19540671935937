"""Spectral clustering of attribution maps: which examples does the model explain alike?

NOTE: [Spectral relevance analysis]
Lapuschkin, Waeldchen, Binder, Montavon, Samek and Mueller ("Unmasking Clever Hans
predictors and assessing what machines really learn", Nature Communications 2019) cluster the
attribution maps of one class to find the distinct strategies a model uses for it, such as a
copyright watermark it keyed on instead of the object (SpRAy). `cluster_attributions` follows
their recipe:
 1. each map is optionally sum-pooled over channels and average-pooled ``pool`` x ``pool``
    (coarser maps compare strategies rather than pixels), flattened and scaled to unit L2
    norm (``normalize=True``), so that examples differ by where their relevance lies rather
    than by how large it is;
 2. a k-nearest-neighbour graph by Euclidean distance (ties: the lower index first), made
    symmetric: W_ij = (K_ij + K_ji) / 2 with K_ij = 1 when j is among i's ``n_neighbors``
    nearest other examples (scikit-learn's ``affinity="nearest_neighbors"``);
 3. the normalised Laplacian L = I - D^(-1/2) W D^(-1/2), D the degrees, and its eigenvalues
    0 = lambda_1 <= lambda_2 <= ... (a dense ``torch.linalg.eigh`` in float64: cubic in the
    number of examples, seconds for a few thousand);
 4. with ``n_clusters=None``, the eigengap heuristic: k = the argmax over k in
    1..max_clusters of lambda_(k+1) - lambda_k. c well separated groups give c eigenvalues
    near 0 and then a jump (exactly 0 for c disconnected components);
 5. Ng, Jordan and Weiss's spectral clustering: the eigenvectors of the k smallest eigenvalues
    as columns, rows scaled to unit length, k-means (scikit-learn, ``n_init=10``, seeded).
Clusters are renumbered by decreasing size (ties: the one whose first example comes first),
and eigenvector signs are fixed (largest |entry| positive), so a seed gives one result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, eq=False)
class Clusters:
    """Result of `cluster_attributions`; tensors on the CPU.

    Attributes:
      labels: (N,) int64 cluster of each example, 0 the largest cluster.
      n_clusters: k, given or chosen by the eigengap.
      eigenvalues: (m,) float64, the m = max(max_clusters, k) + 1 smallest eigenvalues of the
        normalised Laplacian (fewer when N is smaller), ascending.
      eigengap: lambda_(k+1) - lambda_k for the k used (NaN when k = N).
      embedding: (N, 2) float64 coordinates for a scatter plot (spectral or t-SNE).
      means: (k, *map_shape) float64, each cluster's mean of the given attributions.
      counts: (k,) int64 cluster sizes.
      embedding_kind: "spectral" or "tsne", how ``embedding`` was made.

    Example:
      >>> clusters = xattr.cluster_attributions(maps)
      >>> clusters.n_clusters, clusters.counts               # k and the size of each cluster
    """

    labels: torch.Tensor
    n_clusters: int
    eigenvalues: torch.Tensor
    eigengap: float
    embedding: torch.Tensor
    means: torch.Tensor
    counts: torch.Tensor
    embedding_kind: str = "spectral"


def _seed(generator) -> int:
    if isinstance(generator, bool) or not isinstance(generator, (int, torch.Generator)):
        raise TypeError(f"generator must be an int seed or a torch.Generator, got {type(generator).__name__}")
    if isinstance(generator, torch.Generator):
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    return generator % (2**32)


def features(attributions, *, pool: int | None = None, normalize: bool = True) -> torch.Tensor:
    """The (N, D) float64 rows clustered: pooled (images), flattened, optionally unit-L2 rows."""
    if not isinstance(attributions, torch.Tensor):
        try:
            attributions = torch.as_tensor(attributions)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"attributions must be a tensor (or array) of shape (N, ...), got {type(attributions).__name__}") from None
    a = attributions.detach().to("cpu", torch.float64)
    if a.ndim < 2:
        raise ValueError(f"attributions must be batched, shape (N, ...); got {tuple(a.shape)}")
    if a.shape[0] == 0 or a[0].numel() == 0:
        raise ValueError(f"attributions are empty (shape {tuple(a.shape)}): give at least 3 non-empty maps")
    if not torch.isfinite(a).all():
        raise ValueError("attributions hold NaN or infinite values; cluster finite maps")
    if pool is not None:
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool must be a positive int or None, got {pool!r}")
        if a.ndim not in (3, 4):
            raise ValueError(f"pool needs image maps (N, C, H, W) or (N, H, W), got shape {tuple(a.shape)}")
        maps = a.sum(1) if a.ndim == 4 else a
        a = F.avg_pool2d(maps[:, None], pool, stride=pool, ceil_mode=True)[:, 0]
    x = a.reshape(a.shape[0], -1)
    if normalize:
        norm = x.norm(dim=1, keepdim=True)
        x = torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), x)
    return x


def knn_affinity(x: torch.Tensor, n_neighbors: int) -> torch.Tensor:
    """Symmetric kNN connectivity (N, N): (K + K^T) / 2, K_ij = 1 for j among i's nearest others."""
    n = x.shape[0]
    dist = torch.cdist(x, x).fill_diagonal_(float("inf"))
    near = torch.sort(dist, dim=1, stable=True).indices[:, :n_neighbors]
    k = torch.zeros(n, n, dtype=torch.float64).scatter_(1, near, 1.0)
    return (k + k.T) / 2


def laplacian_spectrum(w: torch.Tensor):
    """Eigenvalues (ascending) and eigenvectors of the normalised Laplacian I - D^-1/2 W D^-1/2."""
    d = w.sum(1).rsqrt()
    lap = torch.eye(w.shape[0], dtype=w.dtype) - d[:, None] * w * d[None, :]
    vals, vecs = torch.linalg.eigh((lap + lap.T) / 2)
    big = vecs.abs().argmax(0)
    vecs = vecs * torch.sign(vecs[big, torch.arange(vecs.shape[1])])[None, :]
    return vals.clamp_min(0.0), vecs, d


def _relabel(labels) -> torch.Tensor:
    """Renumbers clusters by decreasing size, ties by first occurrence."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    ids = torch.unique(labels).tolist()
    first = {c: int((labels == c).nonzero()[0]) for c in ids}
    size = {c: int((labels == c).sum()) for c in ids}
    order = sorted(ids, key=lambda c: (-size[c], first[c]))
    out = torch.empty_like(labels)
    for new, old in enumerate(order):
        out[labels == old] = new
    return out


def cluster_attributions(
    attributions,
    *,
    n_clusters: int | None = None,
    max_clusters: int = 8,
    n_neighbors: int = 10,
    pool: int | None = None,
    normalize: bool = True,
    embedding: str = "spectral",
    generator=0,
) -> Clusters:
    """SpRAy: spectral clustering of attribution maps, the number of clusters by eigengap.

    See NOTE: [Spectral relevance analysis] in ``xattr/_src/attribution_clusters.py``.

    Args:
      attributions: (N, ...) maps of N examples (a tensor or array), typically of one class.
      n_clusters: k, or None to choose it by the largest eigengap among the first
        ``max_clusters`` + 1 eigenvalues.
      max_clusters: the largest k the eigengap may choose.
      n_neighbors: neighbours per example in the affinity graph (at most N - 1).
      pool: average-pool image maps (channels summed) ``pool`` x ``pool`` first, or None.
      normalize: scale each flattened map to unit L2 norm (zero maps stay zero).
      embedding: "spectral" (the two eigenvectors after the constant one, as D^-1/2 v) or
        "tsne" (scikit-learn's t-SNE of the clustered rows, seeded) for the 2-D scatter.
      generator: int seed or torch.Generator for k-means and t-SNE.

    Returns:
      a `Clusters`: labels, k, eigenvalues, eigengap, 2-D embedding, per-cluster mean maps.

    Example:
      >>> maps = xattr.saliency(xattr.target(model, 3))(x_train[y_train == 3])
      >>> clusters = xattr.cluster_attributions(maps, max_clusters=6)
      >>> clusters.labels, clusters.means                   # (N,) cluster ids, (k, *map_shape)
    """
    from sklearn.cluster import KMeans

    if embedding not in ("spectral", "tsne"):
        raise ValueError(f"embedding must be 'spectral' or 'tsne', got {embedding!r}")
    for name, v in (("max_clusters", max_clusters), ("n_neighbors", n_neighbors)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n_clusters is not None and (isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1):
        raise ValueError(f"n_clusters must be a positive int or None, got {n_clusters!r}")
    seed = _seed(generator)
    x = features(attributions, pool=pool, normalize=normalize)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"clustering needs at least 3 examples, got {n}")
    if n_clusters is not None and n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} exceeds the {n} examples")
    vals, vecs, d_isqrt = laplacian_spectrum(knn_affinity(x, min(n_neighbors, n - 1)))
    if n_clusters is None:
        m = min(max_clusters, n - 1)
        n_clusters = int(torch.argmax(vals[1 : m + 1] - vals[:m])) + 1
    k = n_clusters
    gap = float(vals[k] - vals[k - 1]) if k < n else float("nan")
    rows = vecs[:, :k]
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300)
    if k == 1:
        labels = torch.zeros(n, dtype=torch.long)
    else:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(rows.numpy())
        labels = _relabel(torch.from_numpy(km.labels_))
    if embedding == "spectral":
        emb = d_isqrt[:, None] * vecs[:, 1:3]
    else:
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
        emb = torch.from_numpy(tsne.fit_transform(x.numpy())).double()
    a = torch.as_tensor(attributions).detach().to("cpu", torch.float64)
    counts = torch.bincount(labels, minlength=k)
    means = torch.stack([a[labels == c].mean(0) for c in range(k)])
    return Clusters(labels, k, vals[: max(max_clusters, k) + 1].clone(), gap, emb.contiguous(), means, counts, embedding)


__all__ = ["Clusters", "cluster_attributions"]
