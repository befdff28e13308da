"""DPM-Solver++ (2M) held against diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2) on random inputs."""

from __future__ import annotations

import pytest
import torch

from core.ddpm.samplers import DPMSolverPP2MScheduler, make_scheduler


def run(scheduler, steps: int, model):
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, int(t)), t, x).prev_sample
    return x, scheduler.timesteps.clone()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 2, 10, 20])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_matches_diffusers(prediction_type, steps, beta_schedule):
    import diffusers

    ours_schedule = {"squaredcos_cap_v2": "cosine"}.get(beta_schedule, beta_schedule)
    ours = DPMSolverPP2MScheduler(
        num_train_timesteps=1000, beta_schedule=ours_schedule, prediction_type=prediction_type, clip_sample=False
    )
    # the solver under test, on the very same betas (the schedules are held against diffusers in test_schedules)
    theirs = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        trained_betas=ours.schedule.betas.numpy(),
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    # both cumulate the betas in float32, in their own order: near alpha_bar ~ 0 (cosine's last steps) that alone
    # differs by 1e-5 relative, so the solver is compared on one alpha_bar
    ours.alphas_cumprod = theirs.alphas_cumprod.clone()
    # a fixed "network": the same random-looking function of (x, t) for both
    w = torch.randn(1, generator=torch.Generator().manual_seed(1))

    def model(x, t):
        return torch.tanh(x * w + t / 1000.0) * 0.9 + 0.1 * torch.sin(3 * x)

    a, ta = run(ours, steps, model)
    b, tb = run(theirs, steps, model)
    assert ta.tolist() == tb.tolist()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # float32: values reach |x| ~ 200 from pure noise


def test_karras_sigmas_match_diffusers():
    import diffusers

    theirs = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", use_karras_sigmas=True)
    ours = make_scheduler("dpmpp_2m_karras", {"kind": "ddpm"}, clip_sample=False)
    model = lambda x, t: torch.tanh(x + t / 1000.0)  # noqa: E731
    a, ta = run(ours, 12, model)
    b, tb = run(theirs, 12, model)
    assert ta.tolist() == tb.tolist()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dpmpp_10_steps_lands_nearer_ddim_50_than_ddim_10_does():
    """The same ODE from the same noise: with the bundled digits model, DPM++ at 10 steps is closer to DDIM at 50
    steps than DDIM at 10 is (the point of a second-order solver)."""
    from core.ddpm.pipeline import DDPMEngineModel
    from tests.conftest import REPO

    engine = DDPMEngineModel.from_pretrained(REPO / "models" / "digits")
    labels = [str(i) for i in range(10)]

    def draw(sampler, steps):
        return engine.generate(labels=labels, num_images=10, num_inference_steps=steps, sampler=sampler, seed=7)

    reference = draw("ddim", 50)
    dpm = (draw("dpmpp_2m", 10) - reference).abs().mean().item()
    ddim = (draw("ddim", 10) - reference).abs().mean().item()
    assert dpm < ddim, (dpm, ddim)
