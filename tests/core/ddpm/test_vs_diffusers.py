"""Hold the engine's forward process and DDPM/DDIM steps against diffusers' schedulers (max abs diff <= 1e-5)."""

import pytest
import torch
from diffusers import DDIMScheduler as RefDDIM
from diffusers import DDPMScheduler as RefDDPM

from core.ddpm.samplers import DDIMScheduler, DDPMScheduler
from core.ddpm.schedules import DIFFUSERS_SCHEDULE_NAMES

TOL = 1e-5
SCHEDULES = ["linear", "cosine"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 3, 8, 8, generator=g)
    model_output = torch.randn(2, 3, 8, 8, generator=g)
    return sample, model_output


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_add_noise_matches(schedule):
    ours = DDPMScheduler(1000, schedule)
    ref = RefDDPM(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE_NAMES[schedule])
    x0, noise = _inputs(1)
    t = torch.tensor([0, 999])
    for ts in (t, torch.tensor([17, 500])):
        diff = (ours.add_noise(x0, noise, ts) - ref.add_noise(x0, noise, ts)).abs().max()
        assert diff <= TOL
    assert (ours.alphas_cumprod - ref.alphas_cumprod).abs().max() <= 1e-6


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("num_inference_steps", [1000, 50])
def test_ddpm_step_matches(schedule, prediction_type, variance_type, num_inference_steps):
    kw = dict(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=True)
    ours = DDPMScheduler(beta_schedule=schedule, variance_type=variance_type, **kw)
    ref = RefDDPM(beta_schedule=DIFFUSERS_SCHEDULE_NAMES[schedule], variance_type=variance_type, **kw)
    ours.set_timesteps(num_inference_steps)
    ref.set_timesteps(num_inference_steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    sample, out = _inputs(2)
    for t in [ours.timesteps[0], ours.timesteps[len(ours.timesteps) // 2], ours.timesteps[-1]]:
        a = ours.step(out, t, sample, generator=torch.Generator().manual_seed(3))
        b = ref.step(out, t, sample, generator=torch.Generator().manual_seed(3))
        assert (a.prev_sample - b.prev_sample).abs().max() <= TOL
        assert (a.pred_original_sample - b.pred_original_sample).abs().max() <= TOL


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_step_matches(schedule, prediction_type, eta, spacing):
    kw = dict(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=True, timestep_spacing=spacing)
    ours = DDIMScheduler(beta_schedule=schedule, **kw)
    ref = RefDDIM(beta_schedule=DIFFUSERS_SCHEDULE_NAMES[schedule], set_alpha_to_one=True, **kw)
    ours.set_timesteps(50)
    ref.set_timesteps(50)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    sample, out = _inputs(4)
    for t in ours.timesteps[[0, 25, -1]]:
        a = ours.step(out, t, sample, eta=eta, generator=torch.Generator().manual_seed(5))
        b = ref.step(out, t, sample, eta=eta, generator=torch.Generator().manual_seed(5))
        assert (a.prev_sample - b.prev_sample).abs().max() <= TOL
        assert (a.pred_original_sample - b.pred_original_sample).abs().max() <= TOL


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_use_clipped_model_output_matches(prediction_type):
    ours = DDIMScheduler(1000, "cosine", prediction_type=prediction_type)
    ref = RefDDIM(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    sample, out = _inputs(6)
    out = out * 5  # large enough that x0 is clipped
    for t in ours.timesteps[[0, 10, -1]]:
        a = ours.step(
            out, t, sample, eta=0.5, use_clipped_model_output=True, generator=torch.Generator().manual_seed(1)
        )
        b = ref.step(out, t, sample, eta=0.5, use_clipped_model_output=True, generator=torch.Generator().manual_seed(1))
        assert (a.prev_sample - b.prev_sample).abs().max() <= TOL


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_full_ddim_loop_matches_with_analytic_model(prediction_type):
    """Whole 20-step loops driven by the same analytic dummy model stay together."""
    ours = DDIMScheduler(1000, "linear", prediction_type=prediction_type)
    ref = RefDDIM(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    x = y = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def model(s, t):
        return 0.1 * s * (int(t) / 1000.0)

    for t in ours.timesteps:
        x = ours.step(model(x, t), t, x).prev_sample
        y = ref.step(model(y, t), t, y).prev_sample
    assert (x - y).abs().max() <= 1e-4
