"""Random-effects pooling and meta-regression against cases worked out by hand."""

import numpy as np
import pytest
from scipy import stats

from models.meta_analysis import random_effects_mean, random_effects_slope


def test_homogeneous_cells_pool_to_the_inverse_variance_mean() -> None:
    variances = np.array([0.01, 0.02, 0.04])
    pooled = random_effects_mean([0.1, 0.1, 0.1], variances)
    assert pooled.tau2 == 0.0 and pooled.q == pytest.approx(0.0)
    assert pooled.estimate == pytest.approx(0.1)
    assert pooled.se == pytest.approx(np.sqrt(1.0 / (1.0 / variances).sum()))
    assert pooled.ci_low < 0.1 < pooled.ci_high


def test_disagreeing_cells_get_a_between_cell_variance() -> None:
    # y = [0, 4], v = [1, 1]: fixed mean 2, Q = 8, C = 2 - 2/2 = 1, tau^2 = (8 - 1) / 1 = 7;
    # random-effects weights 1/8 each: mean 2, SE sqrt(1 / (2/8)) = 2
    pooled = random_effects_mean([0.0, 4.0], [1.0, 1.0])
    assert pooled.q == pytest.approx(8.0)
    assert pooled.tau2 == pytest.approx(7.0)
    assert pooled.estimate == pytest.approx(2.0)
    assert pooled.se == pytest.approx(2.0)
    assert pooled.ci_low == pytest.approx(2.0 - 1.959964 * 2.0, abs=1e-5)
    assert pooled.p_value == pytest.approx(2 * (1 - 0.8413447), abs=1e-6)  # z = 1


def test_slope_of_points_on_a_line_is_exact() -> None:
    x = np.repeat([0.0, 0.33, 0.67, 1.0], 3)
    y = 0.2 - 0.3 * x
    slope = random_effects_slope(x, y, np.full(x.size, 0.01))
    assert slope.estimate == pytest.approx(-0.3)
    assert slope.tau2 == 0.0
    sxx = ((x - x.mean()) ** 2).sum()
    assert slope.se == pytest.approx(np.sqrt(0.01 / sxx))
    assert slope.p_value == pytest.approx(2 * stats.norm.sf(0.3 / slope.se))


def test_slope_with_residual_heterogeneity() -> None:
    # x = [0,0,1,1], y = [0,2,0,2], v = 1: slope 0, Q_E = 4, k - 2 = 2,
    # tr W - tr((X'WX)^-1 X'W^2X) = 4 - 2 = 2, so tau^2 = 1; weights 1/2 give Var(slope) = 2
    slope = random_effects_slope([0, 0, 1, 1], [0.0, 2.0, 0.0, 2.0], [1.0] * 4)
    assert slope.estimate == pytest.approx(0.0, abs=1e-12)
    assert slope.q == pytest.approx(4.0)
    assert slope.tau2 == pytest.approx(1.0)
    assert slope.se == pytest.approx(np.sqrt(2.0))
    assert slope.p_value == pytest.approx(1.0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        random_effects_mean([0.1, 0.2], [0.01])
    with pytest.raises(ValueError, match=">= 0"):
        random_effects_mean([0.1], [-1.0])
    with pytest.raises(ValueError, match="two values"):
        random_effects_slope([0.5, 0.5], [0.1, 0.2], [0.01, 0.01])
