import numpy as np
import pytest
import torch

from core.ddpm.process import FlowMatching, GaussianDiffusion, add_noise, predict_x0_and_eps, velocity
from core.ddpm.schedules import NoiseSchedule, get_beta_schedule


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_alphas_cumprod_monotone_and_endpoints(name, T):
    s = NoiseSchedule(name, T)
    ac = s.alphas_cumprod.double()
    assert s.alphas_cumprod.dtype == torch.float32
    assert torch.all(ac[1:] < ac[:-1])
    assert 0.9 < ac[0] <= 1.0
    assert ac[-1] < 0.1 if T >= 1000 else ac[-1] < ac[0]
    assert torch.all(s.betas > 0) and torch.all(s.betas <= 0.999)
    assert s.alphas_cumprod_prev[0] == 1.0


def test_linear_endpoints_and_cosine_clip():
    b = get_beta_schedule("linear", 1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    c = get_beta_schedule("cosine", 1000)
    assert c.max() == pytest.approx(0.999)  # the last beta is clipped
    assert c.dtype == np.float64


def test_unknown_schedule_raises_naming_field():
    with pytest.raises(ValueError, match="beta_schedule"):
        get_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        get_beta_schedule("linear", 0)


def test_posterior_variance_matches_formula():
    s = NoiseSchedule("linear", 1000)
    t = 500
    expected = s.betas[t] * (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t])
    assert s.posterior_variance[t] == pytest.approx(float(expected), rel=1e-5)


def test_forward_process_statistics():
    """x_t of x0 = c has mean sqrt(abar) c and std sqrt(1 - abar)."""
    s = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7)
    noise = torch.randn(x0.shape, generator=g)
    for t in (0, 250, 999):
        xt = add_noise(s, x0, noise, torch.full((20000,), t))
        a = float(s.alphas_cumprod[t])
        assert xt.mean().item() == pytest.approx(a**0.5 * 0.7, abs=0.02)
        assert xt.std().item() == pytest.approx((1 - a) ** 0.5, abs=0.02)


@pytest.mark.parametrize("pt", ["epsilon", "sample", "v_prediction"])
def test_prediction_conversions_round_trip(pt):
    s = NoiseSchedule("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 1, 4, 4, generator=g)
    eps = torch.randn(4, 1, 4, 4, generator=g)
    t = torch.tensor([1, 100, 500, 900])
    xt = add_noise(s, x0, eps, t)
    target = GaussianDiffusion(s, pt).target(x0, eps, t)
    x0_hat, eps_hat = predict_x0_and_eps(s, target, xt, t, pt)
    assert torch.allclose(x0_hat, x0, atol=2e-3)
    assert torch.allclose(eps_hat, eps, atol=2e-3)
    assert torch.allclose(velocity(s, x0, eps, t), GaussianDiffusion(s, "v_prediction").target(x0, eps, t))


def test_flow_matching_interpolates_endpoints():
    fm = FlowMatching()
    x0, eps = torch.ones(2, 1, 2, 2), -torch.ones(2, 1, 2, 2)
    assert torch.equal(fm.interpolate(x0, eps, torch.zeros(2)), x0)
    assert torch.equal(fm.interpolate(x0, eps, torch.ones(2)), eps)


def test_unknown_prediction_type_raises():
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianDiffusion(NoiseSchedule("linear", 10), "score")
