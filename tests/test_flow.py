"Tests of echoflow.flow: paths, solvers, guidance, diffusers conversion, MeanFlow (notebooks 20-23)."
import math

import numpy as np
import pytest
import torch

from echoflow.flow.meanflow import meanflow_loss, meanflow_sample, meanflow_target, sample_t_r
from echoflow.flow.paths import (LinearPath, PathSample, as_time, flow_matching_loss, logit_normal_t, masked_mean,
                                 pad_dims_like, uniform_t)
from echoflow.flow.solvers import (SOLVERS, cfg_velocity, drop_condition, euler_step, from_diffusers_model,
                                   sample_ode, scheduler_sigmas, scheduler_time_grid, sigma_to_t, t_to_sigma,
                                   t_to_timestep, time_grid, timestep_to_t, to_diffusers_model, with_guidance)
from echoflow.flow.toy import ToyMLP, eight_gaussians, mmd_rbf, sliced_wasserstein, two_moons

SHAPES = [(5, 2), (3, 1, 8, 8), (2, 4, 3, 6, 6)]  # points, frames (B,C,H,W), videos (B,C,T,H,W)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- paths
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_path_closed_form(shape):
    g = gen()
    x_0, x_1 = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64)
    ps = LinearPath().sample(x_0, x_1, t)
    assert isinstance(ps, PathSample) and ps.x_t.shape == shape and ps.t.shape == (shape[0],)
    for b in range(shape[0]):  # element by element, no broadcasting helpers
        tb = float(t[b])
        assert torch.allclose(ps.x_t[b], (1 - tb) * x_0[b] + tb * x_1[b])
        assert torch.allclose(ps.dx_t[b], x_1[b] - x_0[b])
    # dx_t is the time derivative of x_t (finite difference in t)
    eps = 1e-6
    ahead, behind = LinearPath().sample(x_0, x_1, t + eps).x_t, LinearPath().sample(x_0, x_1, t - eps).x_t
    assert torch.allclose((ahead - behind) / (2 * eps), ps.dx_t, atol=1e-6)
    assert torch.allclose(LinearPath().x_1_from(ps.x_t, ps.dx_t, t), x_1)
    assert torch.allclose(LinearPath().x_0_from(ps.x_t, ps.dx_t, t), x_0)


def test_path_ends_scalar_time_and_random_time():
    x_0, x_1 = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(LinearPath().sample(x_0, x_1, 0.0).x_t, x_0)
    assert torch.equal(LinearPath().sample(x_0, x_1, 1.0).x_t, x_1)
    a = LinearPath().sample(x_0, x_1, generator=gen(3))
    b = LinearPath().sample(x_0, x_1, generator=gen(3))
    assert torch.equal(a.t, b.t) and ((a.t >= 0) & (a.t < 1)).all()


def test_path_bad_input():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        LinearPath().sample(x, torch.randn(4, 2), 0.5)
    with pytest.raises(ValueError, match="t: expected"):
        LinearPath().sample(x, x, torch.rand(3))
    with pytest.raises(ValueError, match="t: expected"):
        pad_dims_like(torch.rand(2, 2), x)
    assert as_time(0.5, x).shape == (4,)


def test_time_samplers():
    g = gen()
    u = uniform_t(50000, generator=g)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    ln = logit_normal_t(50000, mean=0.4, std=0.7, generator=g)
    assert ln.min() > 0 and ln.max() < 1
    assert abs(torch.logit(ln).mean().item() - 0.4) < 0.02 and abs(torch.logit(ln).std().item() - 0.7) < 0.02
    with pytest.raises(ValueError, match="batch"):
        uniform_t(-1)
    with pytest.raises(ValueError, match="std"):
        logit_normal_t(3, std=-1.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_flow_matching_loss_values_and_callable(shape):
    g = gen()
    x_0, x_1 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ps = LinearPath().sample(x_0, x_1, torch.rand(shape[0], generator=g))
    assert flow_matching_loss(ps.dx_t, ps).item() == 0.0
    offset = torch.arange(shape[0], dtype=torch.float32)
    per = flow_matching_loss(ps.dx_t + pad_dims_like(offset, ps.dx_t), ps, reduction="none")
    assert torch.allclose(per, offset ** 2)
    seen = {}

    def velocity_fn(x, t, label):
        seen.update(x=x, t=t, label=label)
        return torch.zeros_like(x)
    loss = flow_matching_loss(velocity_fn, ps, label=7)
    assert seen["x"] is ps.x_t and seen["t"] is ps.t and seen["label"] == 7
    assert torch.allclose(loss, (ps.dx_t ** 2).reshape(shape[0], -1).mean(1).mean())


def test_flow_matching_loss_mask_on_padded_frames():
    g = gen()
    x_0, x_1 = torch.randn(3, 1, 5, 4, 4, generator=g), torch.randn(3, 1, 5, 4, 4, generator=g)
    ps = LinearPath().sample(x_0, x_1, 0.5)
    lengths = torch.tensor([5, 3, 1])
    mask = (torch.arange(5)[None] < lengths[:, None]).reshape(3, 1, 5, 1, 1)
    pred = ps.dx_t + 1.0
    garbage = pred.clone()
    garbage[~mask.expand_as(pred)] = 1e3
    assert torch.allclose(flow_matching_loss(pred, ps, mask=mask), torch.tensor(1.0))
    assert torch.allclose(flow_matching_loss(garbage, ps, mask=mask), torch.tensor(1.0))
    assert flow_matching_loss(garbage, ps) > 100
    with pytest.raises(ValueError, match="mask"):
        flow_matching_loss(pred, ps, mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="model output"):
        flow_matching_loss(pred[:, :, :2], ps)
    with pytest.raises(ValueError, match="reduction"):
        flow_matching_loss(pred, ps, reduction="sum")


def test_masked_mean_counts_only_real_elements():
    values = torch.tensor([[1.0, 2.0, 30.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.allclose(masked_mean(values, mask), torch.tensor([1.5, 5.0]))
    assert torch.allclose(masked_mean(values, torch.zeros(2, 3)), torch.zeros(2))  # no real element -> 0, no NaN


# ---------------------------------------------------------------- solvers
def error_slope(method, a=-1.5, steps=(8, 16, 32, 64, 128)):
    x0 = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    errors = [(sample_ode(lambda x, t: a * x, x0, n, method) - x0 * math.exp(a)).abs().max().item() for n in steps]
    return np.polyfit(np.log(steps), np.log(errors), 1)[0], errors


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_solver_order_on_exponential(method, order):
    slope, errors = error_slope(method)
    assert abs(slope + order) < 0.1, (method, slope)
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_solver_order_on_time_and_state_dependent_field(method, order):
    # dx/dt = -2 t x  ->  x(1) = x(0) exp(-1)
    x0 = torch.tensor([[1.5]], dtype=torch.float64)
    steps = (8, 16, 32, 64, 128)
    errors = [(sample_ode(lambda x, t: -2 * t[:, None] * x, x0, n, method) - x0 * math.exp(-1)).abs().item() for n in steps]
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope + order) < 0.15, (method, slope)


def test_linear_in_t_field_exact_and_euler_error():
    b, c = torch.tensor([[0.3, -1.0]], dtype=torch.float64), 2.0
    field = lambda x, t: b + c * t[:, None]  # x(1) = x(0) + b + c/2
    x0 = torch.zeros(1, 2, dtype=torch.float64)
    exact = x0 + b + c / 2
    for method in ("midpoint", "heun"):
        assert torch.allclose(sample_ode(field, x0, 3, method), exact, atol=1e-12)
    for n in (1, 4, 10):  # left Riemann sum: error exactly c / (2 n)
        assert torch.allclose(exact - sample_ode(field, x0, n, "euler"), torch.full((1, 2), c / (2 * n), dtype=torch.float64))


@pytest.mark.parametrize("method", list(SOLVERS))
def test_sample_ode_intermediates_backwards_and_grid(method):
    x0 = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    field = lambda x, t: torch.sin(x) + pad_dims_like(t, x)
    end, states = sample_ode(field, x0, 6, method, return_intermediates=True)
    assert states.shape == (7, 3, 1, 2, 2) and torch.equal(states[0], x0) and torch.equal(states[-1], end)
    back = sample_ode(field, sample_ode(field, x0, 400, method), 400, method, t0=1.0, t1=0.0)
    assert torch.allclose(back, x0, atol=1e-2 if method == "euler" else 1e-5)  # O(h) vs O(h^2) round trip
    assert torch.allclose(sample_ode(field, x0, method=method, time_grid=time_grid(6)), end)


def test_sample_ode_passes_cond_and_rejects_bad_input():
    seen = []
    field = lambda x, t, scale: seen.append(scale) or scale * torch.ones_like(x)
    out = sample_ode(field, torch.zeros(2, 3), 4, cond={"scale": 2.0})
    assert torch.allclose(out, torch.full((2, 3), 2.0)) and seen == [2.0] * 4
    with pytest.raises(ValueError, match="method"):
        sample_ode(field, torch.zeros(2, 3), 4, "rk4")
    with pytest.raises(ValueError, match="steps"):
        sample_ode(field, torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="time_grid"):
        sample_ode(field, torch.zeros(2, 3), time_grid=torch.tensor([0.0]))


# ---------------------------------------------------------------- guidance
def test_drop_condition():
    label = torch.arange(4000) % 3
    dropped = drop_condition(label, 0.3, null=3, generator=gen())
    assert abs((dropped == 3).float().mean().item() - 0.3) < 0.03
    assert torch.equal(dropped[dropped != 3], label[dropped != 3])
    assert torch.equal(drop_condition(label, 0.0, null=3), label)
    assert (drop_condition(label, 1.0, null=3) == 3).all()
    ef, image = torch.rand(500, 1), torch.randn(500, 1, 4, 4)
    d = drop_condition({"ef": ef, "image": image}, 0.5, {"ef": -1.0, "image": torch.zeros(1, 4, 4)}, generator=gen())
    gone_ef, gone_image = d["ef"][:, 0] == -1, (d["image"] == 0).flatten(1).all(1)
    assert torch.equal(gone_ef, gone_image) and 0.4 < gone_ef.float().mean() < 0.6  # dropped together
    with pytest.raises(ValueError, match="p:"):
        drop_condition(label, -0.1, null=3)
    with pytest.raises(ValueError, match="null"):
        drop_condition({"ef": ef}, 0.5, null=0.0)


def test_cfg_velocity():
    field = lambda x, t, ef: x * ef[:, None] + t[:, None]
    x, t = torch.randn(5, 2), torch.rand(5)
    cond, null = {"ef": torch.rand(5)}, {"ef": torch.tensor(0.0)}
    v_c, v_n = field(x, t, **cond), field(x, t, ef=torch.zeros(5))
    for scale in (0.0, 1.0, 2.5):
        expected = v_n + scale * (v_c - v_n)
        assert torch.allclose(cfg_velocity(field, x, t, cond, null, scale), expected)
        assert torch.allclose(cfg_velocity(field, x, t, cond, null, scale, batched=True), expected)
        assert torch.allclose(with_guidance(field, null, scale)(x, t, **cond), expected)
    with pytest.raises(ValueError, match="null_cond"):
        cfg_velocity(field, x, t, cond, {"label": 0}, 2.0)


# ---------------------------------------------------------------- diffusers
def test_time_conversions_round_trip():
    t = torch.rand(10, dtype=torch.float64)
    assert torch.allclose(sigma_to_t(t_to_sigma(t)), t)
    assert torch.allclose(timestep_to_t(t_to_timestep(t, 1000), 1000), t)
    assert torch.allclose(t_to_timestep(torch.tensor(0.25)), torch.tensor(750.0))


def test_one_euler_step_equals_diffusers_step():
    from diffusers import FlowMatchEulerDiscreteScheduler
    torch.manual_seed(0)
    model = ToyMLP()
    x = torch.randn(16, 2)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(5)
    grid = scheduler_time_grid(scheduler)
    timestep = scheduler.timesteps[0]
    with torch.no_grad():
        theirs = scheduler.step(to_diffusers_model(model)(x, timestep), timestep, x).prev_sample
        ours = euler_step(model, x, torch.full((16,), float(grid[0])), float(grid[1] - grid[0]))
        ours_ode = sample_ode(model, x, time_grid=grid[:2])
    assert torch.allclose(theirs, ours, atol=1e-6) and torch.allclose(theirs, ours_ode, atol=1e-6)
    assert (theirs - x).abs().max() > 0.01  # the step did move the sample


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_whole_diffusers_loop_equals_sample_ode(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler
    torch.manual_seed(1)
    model = ToyMLP()
    x = torch.randn(32, 2)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(7)
    with torch.no_grad():
        sample = x.clone()
        for timestep in scheduler.timesteps:
            sample = scheduler.step(to_diffusers_model(model)(sample, timestep), timestep, sample).prev_sample
        ours = sample_ode(model, x, time_grid=scheduler_time_grid(scheduler))
        # the other direction: a diffusers-style model used as our velocity_fn
        ours_wrapped = sample_ode(from_diffusers_model(to_diffusers_model(model)), x,
                                  time_grid=scheduler_time_grid(scheduler))
    assert torch.allclose(sample, ours, atol=1e-5) and torch.allclose(ours_wrapped, ours, atol=1e-5)


def test_scheduler_sigmas_reproduce_our_grid():
    from diffusers import FlowMatchEulerDiscreteScheduler
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    grid = torch.tensor([0.0, 0.1, 0.3, 0.7, 1.0], dtype=torch.float64)
    scheduler.set_timesteps(sigmas=scheduler_sigmas(grid))
    assert torch.allclose(scheduler_time_grid(scheduler), grid, atol=1e-6)
    with pytest.raises(ValueError, match="time_grid"):
        scheduler_sigmas(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler_time_grid(FlowMatchEulerDiscreteScheduler())
    stochastic = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    stochastic.set_timesteps(3)
    with pytest.raises(ValueError, match="stochastic"):
        scheduler_time_grid(stochastic)


# ---------------------------------------------------------------- MeanFlow
def test_sample_t_r():
    t, r = sample_t_r(1000, flow_ratio=0.75, generator=gen())
    assert t.shape == r.shape == (1000,) and (t <= r).all() and t.min() > 0 and r.max() < 1
    assert int((r == t).sum()) == 750
    t, r = sample_t_r(4000, flow_ratio=0.0, mean=0.4, std=1.0, generator=gen())
    assert (r > t).all()
    both = torch.logit(torch.cat([t, r]))
    assert abs(both.mean().item() - 0.4) < 0.05
    assert torch.equal(sample_t_r(8, generator=gen(5))[0], sample_t_r(8, generator=gen(5))[0])
    with pytest.raises(ValueError, match="flow_ratio"):
        sample_t_r(8, flow_ratio=2.0)


def exact_average_velocity(a):
    "u*(z, r, t) for dz/dt = a z: z (exp(a (r - t)) - 1) / (r - t)."
    def u(z, r, t):
        gap = pad_dims_like(r - t, z)
        tiny = gap.abs() < 1e-12
        return torch.where(tiny, a * z, z * torch.expm1(a * gap) / torch.where(tiny, torch.ones_like(gap), gap))
    return u


@pytest.mark.parametrize("jvp", ["autograd", "finite_difference"])
def test_meanflow_target_is_a_fixed_point_of_the_exact_average_velocity(jvp):
    a = 0.7
    u_exact = exact_average_velocity(a)
    z = torch.randn(5, 1, 3, 4, 4, dtype=torch.float64, generator=gen())
    t = torch.rand(5, dtype=torch.float64, generator=gen(1)) * 0.5
    r = t + 0.5 * torch.rand(5, dtype=torch.float64, generator=gen(2))
    u, target = meanflow_target(u_exact, z, r, t, a * z, jvp=jvp)
    assert torch.allclose(target, u, atol=1e-6)
    # a wrong average velocity (the instantaneous one) is not a fixed point
    u_wrong, target_wrong = meanflow_target(lambda z, r, t: a * z, z, r, t, a * z, jvp=jvp)
    assert not torch.allclose(target_wrong, u_wrong, atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_meanflow_jvp_equals_finite_difference(shape):
    torch.manual_seed(0)
    weight = torch.randn(3, dtype=torch.float64)

    def u_fn(z, r, t, scale=1.0):  # nonlinear in z, r and t, any shape
        rr, tt = pad_dims_like(r, z), pad_dims_like(t, z)
        return scale * torch.tanh(weight[0] * z + weight[1] * tt + weight[2] * rr * tt) * (1 + tt ** 2)
    z, v = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    t = torch.rand(shape[0], dtype=torch.float64) * 0.6
    r = t + 0.4 * torch.rand(shape[0], dtype=torch.float64)
    u_jvp, target_jvp = meanflow_target(u_fn, z, r, t, v, cond={"scale": 1.5}, jvp="autograd")
    # an independent finite difference written here: d/dt u(z + (s - t) v, r, s) at s = t
    eps = 1e-5
    fd = (u_fn(z + eps * v, r, t + eps, 1.5) - u_fn(z - eps * v, r, t - eps, 1.5)) / (2 * eps)
    assert torch.allclose(target_jvp, v - pad_dims_like(t - r, z) * fd, atol=1e-8)
    u_fd, target_fd = meanflow_target(u_fn, z, r, t, v, cond={"scale": 1.5}, jvp="finite_difference", fd_eps=1e-4)
    assert torch.allclose(u_fd, u_jvp) and torch.allclose(target_fd, target_jvp, atol=1e-7)


def test_meanflow_fd_option_matches_jvp_on_a_network_in_float32():
    torch.manual_seed(0)
    net = ToyMLP(n_times=2)
    u_fn = lambda z, r, t: net(z, t, r - t)
    z, v = torch.randn(256, 2), torch.randn(256, 2)
    t, r = sample_t_r(256, flow_ratio=0.0, generator=gen())
    _, target_jvp = meanflow_target(u_fn, z, r, t, v)
    _, target_fd = meanflow_target(u_fn, z, r, t, v, jvp="finite_difference")
    scale = target_jvp.abs().mean()
    assert (target_fd - target_jvp).abs().mean() < 1e-3 * scale


def test_meanflow_loss_split_matches_one_pass_and_weights():
    torch.manual_seed(0)
    net = ToyMLP(n_times=2, n_classes=3)
    calls = []

    def u_fn(z, r, t, label):
        calls.append(len(z))
        return net(z, t, r - t, label=label)
    x_0, x_1 = torch.randn(20, 2), two_moons(20, generator=gen())
    label = torch.arange(20) % 3
    t, r = sample_t_r(20, flow_ratio=0.5, generator=gen())
    loss, details = meanflow_loss(u_fn, x_0, x_1, t, r, cond={"label": label}, adaptive_p=0.0, return_details=True)
    assert sorted(calls) == [10, 10]  # the JVP runs only on the rows with r != t
    z = (1 - t[:, None]) * x_0 + t[:, None] * x_1
    u, target = meanflow_target(u_fn, z, r, t, x_1 - x_0, cond={"label": label})
    err = (u - target).pow(2).mean(1)
    assert torch.allclose(loss, err.mean(), atol=1e-6) and details["fraction_mean"] == 0.5
    for p, c in ((1.0, 1e-3), (0.5, 0.1)):
        weighted = meanflow_loss(u_fn, x_0, x_1, t, r, cond={"label": label}, adaptive_p=p, adaptive_c=c)
        assert torch.allclose(weighted, (err / (err + c) ** p).mean(), atol=1e-6)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (net.inp.weight, net.out.weight))


def test_meanflow_loss_video_mask_and_fd():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1 + 2, 1, 3, padding=1)

    def u_fn(z, r, t):
        times = torch.stack([t, r - t], 1)[:, :, None, None, None].expand(-1, -1, *z.shape[2:])
        return conv(torch.cat([z, times], 1))
    x_0, x_1 = torch.randn(4, 1, 6, 5, 5), torch.randn(4, 1, 6, 5, 5)
    mask = (torch.arange(6)[None] < torch.tensor([6, 4, 3, 2])[:, None]).reshape(4, 1, 6, 1, 1)
    t, r = sample_t_r(4, flow_ratio=0.5, generator=gen())
    base = meanflow_loss(u_fn, x_0, x_1, t, r, mask=mask)
    x_1_changed = x_1.clone()
    x_1_changed[~mask.expand_as(x_1)] = 50.0  # padding content must not matter ...
    # ... except through the conv's receptive field; use a model that does not mix frames to check strictly
    frame_local = lambda z, r, t: z * pad_dims_like(1 + r - t, z)
    a = meanflow_loss(frame_local, x_0, x_1, t, r, mask=mask)
    b = meanflow_loss(frame_local, x_0, x_1_changed, t, r, mask=mask)
    assert torch.allclose(a, b) and torch.isfinite(base)
    fd = meanflow_loss(u_fn, x_0, x_1, t, r, mask=mask, jvp="finite_difference")
    assert torch.allclose(fd, base, rtol=1e-3)
    with pytest.raises(ValueError, match="mask"):
        meanflow_loss(u_fn, x_0, x_1, t, r, mask=torch.ones(4, 6))
    with pytest.raises(ValueError, match="jvp"):
        meanflow_loss(u_fn, x_0, x_1, t, r, jvp="reverse")
    with pytest.raises(ValueError, match="give both"):
        meanflow_loss(u_fn, x_0, x_1, t=t)


def test_meanflow_sample():
    a = -0.6
    z0 = torch.randn(3, 1, 2, 3, 3, dtype=torch.float64)
    for steps in (1, 2, 5):
        assert torch.allclose(meanflow_sample(exact_average_velocity(a), z0, steps), z0 * math.exp(a))
    seen = []
    u_fn = lambda z, r, t, ef: seen.append((float(t[0]), float(r[0]), ef)) or torch.ones_like(z)
    end, states = meanflow_sample(u_fn, torch.zeros(2, 3), 4, cond={"ef": 0.6}, return_intermediates=True)
    assert seen == [(0.0, 0.25, 0.6), (0.25, 0.5, 0.6), (0.5, 0.75, 0.6), (0.75, 1.0, 0.6)]
    assert states.shape == (5, 2, 3) and torch.allclose(end, torch.ones(2, 3))
    # one step: x_1 = x_0 + u(x_0, r=1, t=0)
    x0 = torch.randn(4, 2)
    assert torch.equal(meanflow_sample(lambda z, r, t: z * r[:, None] - t[:, None], x0), x0 + x0)


# ---------------------------------------------------------------- toy helpers
def test_toy_data_and_distances():
    moons, gauss = two_moons(1000, generator=gen()), eight_gaussians(1000, generator=gen())
    assert moons.shape == gauss.shape == (1000, 2)
    assert sliced_wasserstein(moons, two_moons(1000, generator=gen(1)), generator=gen()) < 0.12
    assert sliced_wasserstein(moons, gauss, generator=gen()) > 0.5
    assert mmd_rbf(moons, two_moons(1000, generator=gen(1))) < 0.2 * mmd_rbf(moons, gauss)
    assert sliced_wasserstein(moons, moons[:300]) < 0.12  # different sizes: quantiles
    with pytest.raises(ValueError, match="n:"):
        two_moons(0)


@pytest.mark.slow
def test_meanflow_one_step_beats_flow_matching_one_step_on_moons():
    "Briefly trained on the moons, MeanFlow's single step lands far closer to the data than flow matching's."
    def train(model, loss_fn, steps=1500):
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(steps):
            x_1 = two_moons(256)
            loss = loss_fn(model, torch.randn_like(x_1), x_1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model
    fm = train(ToyMLP(n_times=1), lambda m, x_0, x_1: flow_matching_loss(m, LinearPath().sample(x_0, x_1)))
    mf = train(ToyMLP(n_times=2), lambda m, x_0, x_1: meanflow_loss(lambda z, r, t: m(z, t, r - t), x_0, x_1))
    g = gen(7)
    noise, data = torch.randn(2000, 2, generator=g), two_moons(2000, generator=g)
    with torch.no_grad():
        fm_1 = sliced_wasserstein(sample_ode(fm, noise, 1), data, generator=gen())
        fm_50 = sliced_wasserstein(sample_ode(fm, noise, 50), data, generator=gen())
        mf_1 = sliced_wasserstein(meanflow_sample(lambda z, r, t: mf(z, t, r - t), noise, 1), data, generator=gen())
    assert mf_1 < 0.35 * fm_1, (mf_1, fm_1)
    assert abs(mf_1 - fm_50) < 0.25 * abs(fm_1 - fm_50), (mf_1, fm_1, fm_50)
