"""Regression metrics (STS-B style scores): Pearson and Spearman correlation, mean squared error and its root.
One home for them; the correlations are scipy.stats' (`pearsonr`, `spearmanr`, as GLUE's STS-B scorer uses)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapt.errors import AdaptError

REGRESSION_METRICS = ("pearson", "spearman", "mse", "rmse")


def regression_scores(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """Pearson r, Spearman rho, MSE and RMSE of predicted against gold scores (both length N, in the data's
    units; MSE in units squared).

    Pearson r = cov(x, y) / (std(x) std(y)); Spearman rho = Pearson r of the ranks, ties getting their average
    rank (scipy.stats.pearsonr / spearmanr, the figures GLUE reports for STS-B). A correlation is undefined when
    either side is constant; it is reported as 0.0 then (no linear relation can be shown), never NaN.

    Raises:
        AdaptError: the two sequences differ in length, or are empty.
    """
    if len(predictions) != len(references):
        raise AdaptError(f"{len(predictions)} predictions but {len(references)} references")
    if not len(references):
        raise AdaptError("no examples to score")
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(references, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    constant = len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0
    if constant:
        pearson = spearman = 0.0
    else:
        from scipy.stats import pearsonr, spearmanr

        pearson = float(pearsonr(x, y).statistic)
        spearman = float(spearmanr(x, y).statistic)
    return {"pearson": pearson, "spearman": spearman, "mse": mse, "rmse": float(np.sqrt(mse))}
