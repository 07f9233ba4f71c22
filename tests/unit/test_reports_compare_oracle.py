"""The hand-written Mann-Whitney U (reports/compare/stats.py) against scipy as an oracle.

scipy is a dev-only dependency: the harness never imports it. Exact p-values are checked
against scipy's exact permutation distribution (ties included), the normal approximation
against scipy's asymptotic method with the same tie and continuity corrections.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reports.compare.stats import mann_whitney_u


@pytest.fixture(scope="module")
def scipy_stats():
    """Imported by the tests that use it, not at collection: every xdist worker collects this
    module, and scipy.stats costs half a second to import."""
    return pytest.importorskip("scipy.stats")


ALTERNATIVES = st.sampled_from(["greater", "less", "two-sided"])
# Small integers make ties common; floats make them rare. scipy's permutation test needs two
# values a side.
VALUE = st.one_of(st.integers(0, 6).map(float), st.floats(0.0, 50.0, allow_nan=False))


def samples(max_size: int, min_size: int = 1) -> st.SearchStrategy[list[float]]:
    return st.lists(VALUE, min_size=min_size, max_size=max_size)


@settings(max_examples=80, deadline=None)
@given(x=samples(6, 2), y=samples(6, 2), alternative=ALTERNATIVES)
def test_exact_p_agrees_with_scipy_permutation(x, y, alternative, scipy_stats):
    u, p = mann_whitney_u(x, y, alternative)
    exact = scipy_stats.PermutationMethod(n_resamples=np.inf)
    ref = scipy_stats.mannwhitneyu(x, y, alternative=alternative, method=exact)
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12), (x, y, alternative)


@settings(max_examples=80, deadline=None)
@given(x=samples(30, 8), y=samples(30, 8), alternative=ALTERNATIVES)
def test_normal_approximation_agrees_with_scipy_asymptotic(x, y, alternative, scipy_stats):
    assume(len(set(x + y)) > 1)  # every value equal: no variance, scipy's z is undefined
    u, p = mann_whitney_u(x, y, alternative, exact_limit=0)
    ref = scipy_stats.mannwhitneyu(
        x, y, alternative=alternative, method="asymptotic", use_continuity=True
    )
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12), (x, y, alternative)


@settings(max_examples=40, deadline=None)
@given(x=samples(6), y=samples(6))
def test_exact_p_without_ties_agrees_with_scipy_exact(x, y, scipy_stats):
    assume(len(set(x + y)) == len(x + y))
    _, p = mann_whitney_u(x, y, "greater")
    ref = scipy_stats.mannwhitneyu(x, y, alternative="greater", method="exact")
    assert math.isclose(p, ref.pvalue, rel_tol=1e-9, abs_tol=1e-12)
