"""Multivariate drift: how badly the reference's principal components rebuild a window.

NannyML's data reconstruction with PCA. On the reference, the watched columns are
standardised and the principal components that keep ``variance`` of it are found.
A row is projected onto them and back; its reconstruction error is the squared distance
between the standardised row and its reconstruction. A window whose columns each look
like the reference but relate to one another differently (a correlation broken, a
sensor copying another) is rebuilt badly: its mean error rises though no single
column's statistic moves.

The statistic is the window's mean error divided by the reference's (1.0: like the
reference), computed in the store in one statement: with the standardised row ``z``
and orthonormal components ``W``, the error is ``|z|² − |zW|²``. A missing value is
taken at the reference mean (0 after standardising).

What it misses: a change along the kept components themselves (every column shifting
together, a scale change of the main direction) is rebuilt well — the univariate
statistics see those; and a column constant in the reference is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Pca", "error_sql", "fit_pca"]


@dataclass(frozen=True)
class Pca:
    """The reference's standardisation and kept components."""

    columns: tuple[str, ...]
    means: np.ndarray
    stds: np.ndarray
    #: ``[kept, columns]``, orthonormal rows.
    components: np.ndarray


def fit_pca(rows: np.ndarray, columns: list[str], variance: float) -> Pca:
    """Components keeping ``variance`` of the standardised ``rows`` (``[rows, columns]``)."""
    x = np.asarray(rows, dtype=np.float64)
    means = np.nanmean(x, axis=0)
    stds = np.nanstd(x, axis=0)
    keep = stds > 1e-12  # a constant column carries no relation to the others
    x, means, stds = x[:, keep], means[keep], stds[keep]
    names = tuple(c for c, k in zip(columns, keep, strict=True) if k)
    z = np.where(np.isnan(x), 0.0, (x - means) / stds)
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    share = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-300)
    kept = int(np.searchsorted(share, variance) + 1)
    return Pca(names, means, stds, vt[: min(kept, len(names))])


def _literal(value: float) -> str:
    return repr(float(value))


def error_sql(pca: Pca, source: str) -> str:
    """The mean reconstruction error over ``source`` (a table expression with its WHERE)."""
    z = [
        f"if(isNaN(toFloat64(`{c}`)), 0, (toFloat64(`{c}`) - {_literal(m)}) / {_literal(s)})"
        for c, m, s in zip(pca.columns, pca.means, pca.stds, strict=True)
    ]
    norm = " + ".join(f"pow(z{j}, 2)" for j in range(len(z)))
    projections = [
        "pow(" + " + ".join(f"z{j} * {_literal(w)}" for j, w in enumerate(row)) + ", 2)"
        for row in pca.components
    ]
    inner = ", ".join(f"{expr} AS z{j}" for j, expr in enumerate(z))
    return (
        f"SELECT count() AS rows, avg({norm} - ({' + '.join(projections)})) AS error "
        f"FROM (SELECT {inner} FROM {source})"
    )
