r"""Choosing the number of templates by held-out chi^2.

A random fraction of the *observed* entries (``ivar > 0``) is held out: their
weight is set to 0 while fitting, so each spectrum's coefficients and each
pixel's template values are fitted from the remaining entries only (the
entry-wise cross-validation of Wold 1978 and Bro et al. 2008 for bilinear
models).  Each candidate rank k is then scored by the chi^2 of the held-out
entries under the fitted model,

.. math::

    \chi^2_{\rm held}(k) = \sum_{(i,j)\ \rm held\ out} \mathrm{ivar}_{ij}
                           (X_{ij} - [C_k T_k]_{ij})^2 ,

computed with :func:`specnmf.objective._chi2` on the held-out weights.  Too
few templates leave signal in the residuals; too many fit the noise of the
fitted entries and predict the held-out ones worse, so the held-out chi^2 is
lowest near the true rank.  For a correct noise model it tends to about 1 per
held-out entry.

Choosing among near-equal scores: the one-standard-error rule
--------------------------------------------------------------
Beyond the true rank the held-out chi^2 is flat up to noise, and the
candidate with the strictly lowest value is then a coin toss between
equivalent models.  ``best_`` is therefore the *smallest* candidate whose
held-out chi^2 exceeds the minimum by no more than one standard error of
that difference (Hastie, Tibshirani & Friedman, *Elements of Statistical
Learning*, sec. 7.10).  The standard error is that of a sum of paired
per-entry differences: with ``e_k`` the held-out chi^2 terms of candidate k
and ``m`` the minimising candidate,
``se_k = sqrt(n_held * var(e_k - e_m))``.  The pairing removes the noise
that all candidates share (the same held-out entries), so the rule is not
fooled by a bad draw of the held-out set.  ``rule="min"`` returns the plain
minimiser instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from . import _validation as V
from .init import check_random_state
from .objective import _chi2, chi2_terms

logger = logging.getLogger("specnmf")

__all__ = ["Selection", "select_n_components"]


@dataclass
class Selection:
    """Result of :func:`select_n_components`.

    Attributes
    ----------
    candidates_ : ndarray of shape (n_candidates,)
        The numbers of templates tried, increasing.
    scores_ : ndarray of shape (n_candidates,)
        Held-out chi^2 of each candidate.
    scores_per_entry_ : ndarray of shape (n_candidates,)
        ``scores_ / n_heldout_``: held-out chi^2 per held-out observed entry
        (about 1 for a correct model and noise estimate).
    se_ : ndarray of shape (n_candidates,)
        Standard error of ``scores_ - scores_.min()`` (paired over the held-out
        entries; 0 for the minimiser).
    best_ : int
        Selected number of templates (see the module docstring for the rule).
    rule_ : str
        ``"one_se"`` or ``"min"``.
    n_heldout_ : int
        Number of held-out observed entries.
    train_chi2_ : ndarray of shape (n_candidates,)
        Final chi^2 of each fit on the entries that were not held out.
    models_ : list of SpectralNMF or None
        The fitted models, if ``keep_models=True``.
    """

    candidates_: np.ndarray
    scores_: np.ndarray
    scores_per_entry_: np.ndarray
    se_: np.ndarray
    best_: int
    rule_: str
    n_heldout_: int
    train_chi2_: np.ndarray
    models_: list | None = field(default=None, repr=False)

    def table(self) -> str:
        """A plain-text table of the scores, the selected candidate marked ``*``."""
        lines = [f"{'k':>4}  {'held-out chi2':>14}  {'per entry':>10}  {'delta':>12}  "
                 f"{'se':>10}  {'train chi2':>14}"]
        best_score = float(np.min(self.scores_))
        for k, s, spe, se, tr in zip(self.candidates_, self.scores_, self.scores_per_entry_,
                                     self.se_, self.train_chi2_):
            mark = " *" if k == self.best_ else ""
            lines.append(f"{int(k):>4}  {s:>14.6g}  {spe:>10.4f}  {s - best_score:>12.4g}  "
                         f"{se:>10.4g}  {tr:>14.6g}{mark}")
        lines.append(f"best n_components = {self.best_} ({self.rule_} rule; "
                     f"{self.n_heldout_} held-out entries)")
        return "\n".join(lines)


def _check_candidates(candidates, n, d):
    try:
        values = [c for c in candidates]
    except TypeError as exc:
        raise TypeError(f"candidates must be an iterable of integers; got {candidates!r}") from exc
    if not values:
        raise ValueError("candidates is empty")
    for c in values:
        if isinstance(c, bool) or not isinstance(c, Integral):
            raise TypeError(f"candidates must be integers; got {c!r}")
    limit = min(n, d)
    bad = [int(c) for c in values if not 1 <= c <= limit]
    if bad:
        raise ValueError(f"candidates must lie in [1, min(n_spectra, n_pixels)] = [1, {limit}]; "
                         f"got {bad}")
    return np.array(sorted(set(int(c) for c in values)), dtype=int)


def _chi2_terms(X, ivar, C, T):
    """Per-entry chi^2 contributions of the entries with ``ivar > 0`` (flattened)."""
    return chi2_terms(X - C @ T, ivar)[ivar > 0]


def select_n_components(X, *, ivar=None, candidates=range(1, 9), holdout=0.1, random_state=None,
                        rule="one_se", keep_models=False, estimator=None, **fit_kwargs):
    """Number of templates with the lowest held-out chi^2.

    Parameters
    ----------
    X : array-like of shape (n_spectra, n_pixels)
        Flux; may be negative; NaN/inf only where ``ivar == 0``.
    ivar : array-like of shape (n_spectra, n_pixels), optional
        Inverse variance, 0 = missing.  ``None``: unit weights.  Never modified.
    candidates : iterable of int, default=range(1, 9)
        Numbers of templates to try (each in ``[1, min(n_spectra, n_pixels)]``).
    holdout : float, default=0.1
        Fraction of the observed entries held out, in (0, 0.5].
    random_state : int, numpy.random.Generator or None, default=None
        Draws the held-out entries and, unless ``fit_kwargs`` has its own
        ``random_state``, seeds each fit.
    rule : {"one_se", "min"}, default="one_se"
        ``"one_se"``: the smallest candidate within one standard error of the
        lowest held-out chi^2 (see :mod:`specnmf.selection`); ``"min"``: the
        lowest held-out chi^2.
    keep_models : bool, default=False
        Keep the fitted models in ``models_``.
    estimator : class, optional
        Estimator class, default :class:`specnmf.SpectralNMF`.
    **fit_kwargs
        Parameters of ``SpectralNMF`` (``solver``, ``max_iter``, ``tol``, ...),
        the same for every candidate.

    Returns
    -------
    Selection
        ``scores_``, ``candidates_``, ``best_`` and the rest.

    Examples
    --------
    >>> import numpy as np
    >>> from specnmf.selection import select_n_components
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.gamma(2.0, size=(60, 2)) @ rng.uniform(size=(2, 40))
    >>> X = truth + rng.normal(scale=0.05, size=truth.shape)
    >>> sel = select_n_components(X, ivar=np.full(X.shape, 400.0), candidates=[1, 2, 3],
    ...                           random_state=0, max_iter=300)
    >>> sel.best_
    2
    """
    if estimator is None:
        from .estimator import SpectralNMF as estimator
    X, ivar = V.check_spectra(X, ivar, dtype="float64")
    n, d = X.shape
    cands = _check_candidates(candidates, n, d)
    if isinstance(holdout, bool) or not isinstance(holdout, Real) or not 0 < holdout <= 0.5:
        raise ValueError(f"holdout must be a fraction in (0, 0.5]; got {holdout!r}")
    if rule not in ("one_se", "min"):
        raise ValueError(f"rule must be 'one_se' or 'min'; got {rule!r}")
    rng = check_random_state(random_state)

    observed = np.flatnonzero(ivar > 0)
    n_held = int(round(holdout * observed.size))
    if n_held < 1:
        raise ValueError(f"holdout={holdout} of {observed.size} observed entries holds out none; "
                         "use a larger holdout or more data")
    held = np.zeros(ivar.size, dtype=bool)
    held[rng.choice(observed, size=n_held, replace=False)] = True
    held = held.reshape(ivar.shape)
    # check_spectra may return the caller's array: build new ones, never assign into ivar
    ivar_train = np.where(held, 0.0, ivar)
    ivar_held = np.where(held, ivar, 0.0)

    scores, train, terms, models = [], [], [], []
    for k in cands:
        params = dict(fit_kwargs)
        params.setdefault("random_state", int(rng.integers(2**31 - 1)))
        model = estimator(int(k), **params).fit(X, ivar=ivar_train)
        C, T = np.asarray(model.coefficients_, dtype=np.float64), np.asarray(model.templates_,
                                                                             dtype=np.float64)
        score = _chi2(X, ivar_held, C, T, np)
        scores.append(score)
        terms.append(_chi2_terms(X, ivar_held, C, T))
        train.append(float(model.chi2_[-1]))
        logger.info("n_components=%d: held-out chi2 %.6g (%.4f per entry)", k, score,
                    score / n_held)
        if keep_models:
            models.append(model)
    scores = np.asarray(scores)
    i_min = int(np.argmin(scores))
    se = np.array([np.sqrt(n_held * np.var(terms[i] - terms[i_min])) for i in range(len(cands))])
    if rule == "min":
        best = int(cands[i_min])
    else:
        within = np.flatnonzero(scores - scores[i_min] <= se)
        best = int(cands[within[0]])
    return Selection(
        candidates_=cands,
        scores_=scores,
        scores_per_entry_=scores / n_held,
        se_=se,
        best_=best,
        rule_=rule,
        n_heldout_=n_held,
        train_chi2_=np.asarray(train),
        models_=models if keep_models else None,
    )
