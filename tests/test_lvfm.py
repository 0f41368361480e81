"""LVFM: masked conditioning, pad masks, both backbones, flow matching and MeanFlow training, generation, save/load."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from echoflow.core import load_preset, save_model
from echoflow.flow.meanflow import meanflow_target
from echoflow.lvfm import (LVFMObjective, SpaceTimeTransformer, SpatioTemporalUNet, area_ef, build_lvfm, frame_channel,
                           generate, load_lvfm, masked_condition, nfe, reference_frames, sample_observed_mask, truncate_clips)
from echoflow.train import fit

torch.set_num_threads(1)


def _perturb(model, scale=0.05, seed=0):
    "Random non-zero weights (AdaLN-Zero makes a fresh model output exactly zero)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters(): p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny(meanflow=False, max_frames=8, **kw):
    return SpaceTimeTransformer(**({"latent_channels": 4, "sample_size": 8, "max_frames": max_frames, "patch_size": 2,
                                    "hidden_size": 32, "depth": 2, "heads": 2, "meanflow": meanflow} | kw))


def tiny_unet(meanflow=False, max_frames=8, **kw):
    return SpatioTemporalUNet(latent_channels=4, sample_size=8, max_frames=max_frames, block_out_channels=(32, 64),
                              heads=(1, 2), ef_dim=16, add_time_dim=16, meanflow=meanflow, **kw)


def batch(B=2, T=8, n_real=(8, 5), seed=1):
    g = torch.Generator().manual_seed(seed)
    pad = torch.stack([torch.arange(T) >= n for n in n_real])
    return {"latents": torch.randn(B, 4, T, 8, 8, generator=g), "pad_mask": pad, "ef": torch.tensor([35.0, 62.0])[:B]}


# ---------------------------------------------------------------- conditioning

def test_masked_condition_channels():
    x = torch.randn(2, 4, 6, 8, 8)
    obs = torch.zeros(2, 6, dtype=torch.bool); obs[0, 2] = True; obs[1, 5] = True
    pad = torch.zeros(2, 6, dtype=torch.bool); pad[1, 4:] = True
    c = masked_condition(x, obs, pad)
    assert c.shape == (2, 6, 6, 8, 8)
    torch.testing.assert_close(c[0, :4, 2], x[0, :, 2])
    assert c[0, :4, [0, 1, 3, 4, 5]].abs().sum() == 0
    assert c[1, 4].sum() == 0                       # the observed frame 5 is padding: not observed
    assert c[1, 5, :, 0, 0].tolist() == [1, 1, 1, 1, 0, 0]


@pytest.mark.parametrize("bad", ["obs_shape", "pad_shape", "all_pad", "not_video"])
def test_masked_condition_bad_input(bad):
    x, obs, pad = torch.randn(2, 4, 6, 8, 8), torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.bool)
    if bad == "obs_shape": obs = torch.zeros(2, 5, dtype=torch.bool)
    if bad == "pad_shape": pad = torch.zeros(3, 6, dtype=torch.bool)
    if bad == "all_pad": pad[1] = True
    if bad == "not_video": x = x[:, :, 0]
    with pytest.raises(ValueError): masked_condition(x, obs, pad)


def test_reference_frames_is_the_mean_of_the_observed_frames():
    x = torch.randn(2, 4, 6, 8, 8)
    obs = torch.zeros(2, 6, dtype=torch.bool); obs[0, [1, 4]] = True       # clip 1 observes nothing
    ref = reference_frames(masked_condition(x, obs))
    assert ref.shape == x.shape
    assert torch.allclose(ref[0, :, 3], (x[0, :, 1] + x[0, :, 4]) / 2, atol=1e-6) and torch.equal(ref[0, :, 0], ref[0, :, 5])
    assert ref[1].abs().max() == 0


@pytest.mark.parametrize("make", [tiny, tiny_unet])
def test_reference_channels_can_be_switched_off(make):
    "reference=False is the EchoLVFM-only input (2C + 2 channels); both variants run and differ in their inputs."
    x, t, ef = torch.randn(2, 4, 8, 8, 8), torch.rand(2), torch.tensor([0.3, 0.6])
    obs = torch.zeros(2, 8, dtype=torch.bool); obs[:, 0] = True
    cond = masked_condition(x, obs)
    on, off = _perturb(make(reference=True)), _perturb(make(reference=False))
    assert on(x, t, cond, ef).shape == off(x, t, cond, ef).shape == x.shape
    assert sum(p.numel() for p in on.parameters()) > sum(p.numel() for p in off.parameters())


def test_sample_observed_mask_distribution():
    pad = torch.zeros(3000, 10, dtype=torch.bool); pad[:, 7:] = True
    m = sample_observed_mask(pad, p_none=0.2, p_single=0.5, generator=torch.Generator().manual_seed(0))
    k = m.sum(1)
    assert not (m & pad).any()
    assert abs((k == 0).float().mean() - 0.2) < 0.03
    assert (k == 1).float().mean() > 0.5                       # singles plus the k=1 draws of U{1..6}
    assert k.max() <= 6                                        # never all 7 real frames
    with pytest.raises(ValueError): sample_observed_mask(pad, p_none=0.6, p_single=0.6)


def test_truncate_clips_keeps_min_frames():
    pad = torch.zeros(400, 16, dtype=torch.bool)
    out = truncate_clips(pad, p_short=1.0, min_frames=5, generator=torch.Generator().manual_seed(0))
    n = (~out).sum(1)
    assert n.min() >= 5 and n.max() <= 16 and len(n.unique()) > 6
    assert torch.equal(out, out.cummax(1).values)              # padding stays a tail
    with pytest.raises(ValueError): truncate_clips(pad, p_short=1.5)


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("make", [tiny, tiny_unet])
@pytest.mark.parametrize("meanflow", [False, True])
def test_forward_shapes(make, meanflow):
    net = _perturb(make(meanflow=meanflow))
    b = batch()
    cond = masked_condition(b["latents"], torch.zeros(2, 8, dtype=torch.bool), b["pad_mask"])
    out = net(torch.randn(2, 4, 8, 8, 8), torch.rand(2), cond, torch.tensor([0.3, 0.6]), interval=torch.rand(2))
    assert out.shape == (2, 4, 8, 8, 8) and torch.isfinite(out).all()


def test_transformer_starts_at_zero_velocity():
    net = tiny()
    cond = masked_condition(torch.randn(1, 4, 8, 8, 8), torch.zeros(1, 8, dtype=torch.bool))
    assert net(torch.randn(1, 4, 8, 8, 8), torch.rand(1), cond, torch.tensor([0.5])).abs().max() == 0


def test_transformer_ignores_padding_in_attention():
    net = _perturb(tiny(max_frames=12))
    x, x1 = torch.randn(1, 4, 12, 8, 8), torch.randn(1, 4, 12, 8, 8)
    obs = torch.zeros(1, 12, dtype=torch.bool); obs[0, 0] = True
    pad = torch.arange(12)[None] >= 7
    t, ef = torch.rand(1), torch.tensor([0.5])
    padded = net(x, t, masked_condition(x1, obs, pad), ef)
    x_junk = x.clone(); x_junk[:, :, 7:] = 100.0
    torch.testing.assert_close(net(x_junk, t, masked_condition(x1, obs, pad), ef)[:, :, :7], padded[:, :, :7])
    torch.testing.assert_close(net(x[:, :, :7], t, masked_condition(x1[:, :, :7], obs[:, :7]), ef), padded[:, :, :7],
                               atol=1e-5, rtol=1e-4)


def test_transformer_bad_sizes():
    with pytest.raises(ValueError, match="divisible"): tiny(sample_size=7)
    with pytest.raises(ValueError, match="divisible"): tiny(hidden_size=30, heads=4)
    with pytest.raises(ValueError, match="multiples of 32"): SpatioTemporalUNet(block_out_channels=(16, 32), heads=(1, 1))


def test_ef_changes_the_output_and_null_is_learned():
    net = _perturb(tiny())
    x, cond = torch.randn(2, 4, 8, 8, 8), masked_condition(torch.randn(2, 4, 8, 8, 8), torch.zeros(2, 8, dtype=torch.bool))
    t = torch.rand(2)
    a = net(x, t, cond, torch.tensor([0.2, 0.2])); b = net(x, t, cond, torch.tensor([0.8, 0.8]))
    assert (a - b).abs().max() > 1e-3
    null = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(net(x, t, cond, torch.tensor([0.2, 0.2]), ef_null=null), net(x, t, cond, torch.tensor([0.8, 0.8]), ef_null=null))


# ---------------------------------------------------------------- objectives

@pytest.mark.parametrize("objective", ["flow", "meanflow"])
@pytest.mark.parametrize("make", [tiny, tiny_unet])
def test_loss_ignores_padded_frames(objective, make):
    net = _perturb(make(meanflow=objective == "meanflow"))
    obj = LVFMObjective(objective, flow_ratio=0.5, adaptive_p=0.0, p_short=0.0)
    def loss(b):
        torch.manual_seed(0); return obj(net, b)[0].item()
    base = loss(batch())
    b = batch(); b["latents"][1, :, 5:] = 50.0                 # change only video 1's padded frames
    assert loss(b) == pytest.approx(base, rel=1e-5, abs=1e-6)
    b = batch(); b["latents"][1, :, 3] += 1.0                  # change one of its real frames
    assert abs(loss(b) - base) > 1e-4


def test_meanflow_jvp_runs_on_cpu_and_matches_finite_difference():
    net = _perturb(tiny(meanflow=True)).double()
    b = batch()
    x_1 = b["latents"].double(); x_0 = torch.randn_like(x_1)
    t, r = torch.tensor([0.2, 0.5], dtype=torch.float64), torch.tensor([0.7, 0.9], dtype=torch.float64)
    z = (1 - t)[:, None, None, None, None] * x_0 + t[:, None, None, None, None] * x_1
    cond = {"cond": masked_condition(x_1, torch.zeros(2, 8, dtype=torch.bool), b["pad_mask"]),
            "ef": torch.tensor([0.3, 0.6], dtype=torch.float64), "ef_null": torch.zeros(2, dtype=torch.bool)}
    def u_fn(z, r, t, cond, ef, ef_null): return net(z, t, cond, ef, interval=r - t, ef_null=ef_null)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        _, target_ad = meanflow_target(u_fn, z, r, t, x_1 - x_0, cond, jvp="autograd")
    _, target_fd = meanflow_target(u_fn, z, r, t, x_1 - x_0, cond, jvp="finite_difference", fd_eps=1e-7)   # the time embedding has frequencies up to 1000
    torch.testing.assert_close(target_ad, target_fd, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny, tiny_unet])
@pytest.mark.parametrize("jvp", ["autograd", "finite_difference"])
def test_meanflow_step_trains_every_parameter(make, jvp):
    net = _perturb(make(meanflow=True)).train()
    loss, logs = LVFMObjective("meanflow", flow_ratio=0.0, jvp=jvp)(net, batch())
    loss.backward()
    assert torch.isfinite(loss) and np.isfinite(logs["mse_mean"])
    missing = [n for n, p in net.named_parameters() if p.grad is None and "null" not in n]
    assert not missing, missing


def test_meanflow_loss_learns_the_velocity_field_it_is_given():
    "flow rows (r = t): the target is exactly what `velocity` returns, not the path's x_1 - x_0"
    from echoflow.flow.meanflow import meanflow_loss
    torch.manual_seed(0)
    x_0, x_1 = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.rand(4); lin = torch.nn.Linear(3, 3)
    u_fn = lambda z, r, t_: lin(z)
    z = (1 - t[:, None]) * x_0 + t[:, None] * x_1
    plain = meanflow_loss(u_fn, x_0, x_1, t, t.clone(), adaptive_p=0.0)
    doubled = meanflow_loss(u_fn, x_0, x_1, t, t.clone(), adaptive_p=0.0, velocity=lambda z_, t_, v: 2 * v)
    torch.testing.assert_close(plain, (lin(z) - (x_1 - x_0)).pow(2).mean())
    torch.testing.assert_close(doubled, (lin(z) - 2 * (x_1 - x_0)).pow(2).mean())
    with pytest.raises(ValueError, match="velocity output"):
        meanflow_loss(u_fn, x_0, x_1, t, t.clone(), velocity=lambda z_, t_, v: v[:, :2])


def test_meanflow_training_guidance_target():
    "conditioned rows learn w v + k u(EF) + (1 - w - k) u(null) with w = w'(1 - k); rows with EF dropped learn v"
    net = _perturb(tiny(meanflow=True)).train()
    b = batch()
    def loss(obj):
        torch.manual_seed(0)
        return obj(net, b)[0]
    plain = loss(LVFMObjective("meanflow", flow_ratio=1.0, adaptive_p=0.0, ef_dropout=0.1))
    guided = loss(LVFMObjective("meanflow", flow_ratio=1.0, adaptive_p=0.0, ef_dropout=0.1, guidance=4.0, guidance_mix=0.5))
    assert abs(guided.item() - plain.item()) > 1e-4
    # recompute the guided target by hand on the same draws (flow_ratio=1: every row has r = t, no JVP)
    obj = LVFMObjective("meanflow", flow_ratio=1.0, adaptive_p=0.0, ef_dropout=0.1, guidance=4.0, guidance_mix=0.5)
    torch.manual_seed(0)
    inp = obj.inputs(b); x_0 = torch.randn_like(inp["x_1"])
    from echoflow.flow.meanflow import sample_t_r
    t, _ = sample_t_r(2, 1.0)                      # meanflow_loss draws (t, r) with its own defaults
    tt = t[:, None, None, None, None]; z = (1 - tt) * x_0 + tt * inp["x_1"]; v = inp["x_1"] - x_0
    with torch.no_grad():
        zero = torch.zeros_like(t)
        u_c = net(z, t, inp["cond"], inp["ef"], interval=zero, ef_null=inp["ef_null"])
        u_0 = net(z, t, inp["cond"], inp["ef"], interval=zero, ef_null=torch.ones_like(inp["ef_null"]))
    field = 2.0 * v + 0.5 * u_c + (1 - 2.0 - 0.5) * u_0
    target = torch.where(inp["ef_null"][:, None, None, None, None], v, field)
    u = net(z, t, inp["cond"], inp["ef"], interval=zero, ef_null=inp["ef_null"])
    real = frame_channel(~inp["pad_mask"], v)[:, :1, :, :1, :1].expand_as(v).float()
    err = ((u - target).pow(2) * real).flatten(1).sum(1) / real.flatten(1).sum(1)
    torch.testing.assert_close(guided, err.mean(), rtol=1e-5, atol=1e-6)
    guided.backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if "null" not in n)


def test_meanflow_training_guidance_against_a_reference_ef():
    "with guidance_ef the guided target pushes away from u(z, t, t | reference EF) instead of the null EF's"
    net = _perturb(tiny(meanflow=True)).train()
    b = batch()
    kw = dict(flow_ratio=1.0, adaptive_p=0.0, ef_dropout=0.1, guidance=4.0, guidance_mix=0.5)
    def loss(obj):
        torch.manual_seed(0)
        return obj(net, b)[0]
    null, ref = loss(LVFMObjective("meanflow", **kw)), loss(LVFMObjective("meanflow", guidance_ef=55.0, **kw))
    assert abs(ref.item() - null.item()) > 1e-5
    obj = LVFMObjective("meanflow", guidance_ef=55.0, **kw)
    torch.manual_seed(0)
    inp = obj.inputs(b); x_0 = torch.randn_like(inp["x_1"])
    from echoflow.flow.meanflow import sample_t_r
    t, _ = sample_t_r(2, 1.0)
    tt = t[:, None, None, None, None]; z = (1 - tt) * x_0 + tt * inp["x_1"]; v = inp["x_1"] - x_0
    with torch.no_grad():
        zero, keep = torch.zeros_like(t), torch.zeros_like(inp["ef_null"])
        u_c = net(z, t, inp["cond"], inp["ef"], interval=zero, ef_null=inp["ef_null"])
        u_ref = net(z, t, inp["cond"], torch.full_like(inp["ef"], 0.55), interval=zero, ef_null=keep)
    target = torch.where(inp["ef_null"][:, None, None, None, None], v, 2.0 * v + 0.5 * u_c - 1.5 * u_ref)
    u = net(z, t, inp["cond"], inp["ef"], interval=zero, ef_null=inp["ef_null"])
    real = frame_channel(~inp["pad_mask"], v)[:, :1, :, :1, :1].expand_as(v).float()
    err = ((u - target).pow(2) * real).flatten(1).sum(1) / real.flatten(1).sum(1)
    torch.testing.assert_close(ref, err.mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="guidance_ef"): LVFMObjective("meanflow", guidance=3.0, guidance_ef=130.0)
    LVFMObjective("meanflow", guidance=3.0, ef_dropout=0.0, guidance_ef=50.0)   # a reference EF needs no dropped EF


def test_preset_guidance_ef_reaches_config_objective_and_saved_model(tmp_path):
    L = dict(load_preset("smoke", {"lvfm.guidance_ef": 54.4})["lvfm"])
    from echoflow.lvfm import load_lvfm, lvfm_objective
    fm = build_lvfm(L, 4, 8)
    assert fm.config.guidance_ef == 54.4 and lvfm_objective(L, "meanflow").guidance_ef == 54.4
    fm.save_pretrained(tmp_path/"m")
    assert load_lvfm(tmp_path/"m").config.guidance_ef == 54.4
    assert build_lvfm(dict(load_preset("smoke")["lvfm"]), 4, 8).config.guidance_ef is None
    assert lvfm_objective(L | {"meanflow_guidance": 1.0}, "meanflow").guidance_ef is None   # no guidance trained in: nothing to point


def test_training_guidance_arguments_and_unguided_sampling():
    with pytest.raises(ValueError, match="meanflow"): LVFMObjective("flow", guidance=3.0)
    with pytest.raises(ValueError, match="guidance"): LVFMObjective("meanflow", guidance=0.5)
    with pytest.raises(ValueError, match="guidance"): LVFMObjective("meanflow", guidance=3.0, guidance_mix=1.0)
    with pytest.raises(ValueError, match="ef_dropout"): LVFMObjective("meanflow", guidance=3.0, ef_dropout=0.0)
    L = dict(load_preset("smoke")["lvfm"])
    assert L["meanflow_guidance"] > 1
    mf, fm = build_lvfm(L, 4, 8, meanflow=True), build_lvfm(L, 4, 8)
    assert mf.config.guidance_scale == 1.0 and fm.config.guidance_scale == L["cfg_scale"]
    assert nfe(mf) == 1                                    # guidance trained in: one call
    assert build_lvfm(L | {"meanflow_guidance": 1.0}, 4, 8, meanflow=True).config.guidance_scale == L["cfg_scale"]
    from echoflow.lvfm import lvfm_objective
    obj = lvfm_objective(L, "meanflow")
    assert (obj.guidance, obj.guidance_mix) == (L["meanflow_guidance"], L["meanflow_guidance_mix"])
    assert lvfm_objective(L, "flow").guidance == 1.0


def test_time_distribution_reaches_both_objectives(monkeypatch):
    "time_mean / time_std set the draw of t for flow matching and MeanFlow alike; None keeps each one's default"
    import inspect
    import echoflow.lvfm as lvfm_mod
    seen = {}
    def spy(name):
        fn = getattr(lvfm_mod, name)
        def wrapped(*a, **k):
            seen[name] = inspect.signature(fn).bind(*a, **k).arguments
            return fn(*a, **k)
        monkeypatch.setattr(lvfm_mod, name, wrapped)
    spy("meanflow_loss"); spy("logit_normal_t")
    net = tiny(meanflow=True).train()
    def drawn(objective, **times):
        seen.clear(); LVFMObjective(objective, flow_ratio=1.0, **times)(net, batch())
        a = seen["logit_normal_t" if objective == "flow" else "meanflow_loss"]
        return a.get("mean", a.get("time_mean")), a.get("std", a.get("time_std"))
    assert drawn("flow") == (0.0, 1.0) and drawn("meanflow") == (None, None)   # MeanFlow: meanflow_loss's own 0.4 / 1.0
    assert drawn("flow", time_mean=2.5, time_std=0.3) == drawn("meanflow", time_mean=2.5, time_std=0.3) == (2.5, 0.3)


def test_objective_bad_arguments():
    with pytest.raises(ValueError, match="objective"): LVFMObjective("diffusion")
    with pytest.raises(ValueError, match="ef_dropout"): LVFMObjective(ef_dropout=2.0)
    with pytest.raises(ValueError, match="latents"): LVFMObjective()(tiny(), {"frames": torch.zeros(1)})
    with pytest.raises(ValueError, match="pad_mask"): LVFMObjective()(tiny(), {"latents": torch.zeros(2, 4, 8, 8, 8), "pad_mask": torch.zeros(2, 7)})


def test_ef_dropout_and_missing_ef_use_the_null():
    obj = LVFMObjective(ef_dropout=0.0)
    b = batch(); b["ef"] = torch.tensor([float("nan"), 50.0])
    inputs = obj.inputs(b)
    assert inputs["ef_null"].tolist() == [True, False] and torch.isfinite(inputs["ef"]).all()
    assert LVFMObjective(ef_dropout=1.0).inputs(batch())["ef_null"].all()


# ---------------------------------------------------------------- generation

@pytest.mark.parametrize("meanflow", [False, True])
def test_generation_is_repeatable_with_a_seed(meanflow):
    net = _perturb(tiny(meanflow=meanflow))
    anatomy = torch.randn(2, 4, 8, 8)
    kw = dict(anatomy=anatomy, num_frames=6, steps=None if meanflow else 3)
    a = generate(net, [30, 70], generator=torch.Generator().manual_seed(0), **kw)
    b = generate(net, [30, 70], generator=torch.Generator().manual_seed(0), **kw)
    c = generate(net, [30, 70], generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == (2, 4, 6, 8, 8)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("make,meanflow", [(tiny, False), (tiny, True), (tiny_unet, False)])
def test_generation_returns_its_trajectory(make, meanflow):
    "The states at every step (for the flow stepper): noise first, the returned video last, cropped to the asked length."
    net = _perturb(make(meanflow=meanflow))
    kw = dict(anatomy=torch.randn(2, 4, 8, 8), num_frames=6, steps=3, generator=torch.Generator().manual_seed(0))
    x, states = generate(net, [30, 70], return_intermediates=True, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    assert states.shape == (4, 2, 4, 6, 8, 8)
    assert torch.equal(states[-1], x) and torch.equal(x, generate(net, [30, 70], **kw))
    assert (states[0] - states[-1]).abs().mean() > 1e-3


def test_generation_modes_and_counterfactual():
    net = _perturb(tiny(meanflow=True))
    x = torch.randn(2, 4, 8, 8, 8)
    obs = torch.zeros(2, 8, dtype=torch.bool); obs[:, [0, 4]] = True
    g = lambda: torch.Generator().manual_seed(0)
    rec = generate(net, [40, 40], observed=x, observed_mask=obs, generator=g())
    cf = generate(net, [75, 75], observed=x, observed_mask=obs, generator=g())
    free = generate(net, [40, 40], generator=g())
    assert rec.shape == cf.shape == free.shape == (2, 4, 8, 8, 8)
    assert (rec - cf).abs().max() > 1e-3 and (rec - free).abs().max() > 1e-3
    guided = generate(net, [40, 40], observed=x, observed_mask=obs, generator=g(), cfg_scale=2.0)
    assert (guided - rec).abs().max() > 1e-4


def test_guided_flow_sampling_is_classifier_free_guidance():
    "the multi-step sampler's batched guidance (EF and null halves in one call) equals v_null + s (v_EF - v_null), step by step"
    for net in (_perturb(tiny()), _perturb(tiny_unet())):
        anatomy, ef, s = torch.randn(2, 4, 8, 8), torch.tensor([30.0, 70.0]), 3.0
        noise = torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
        out = generate(net, ef, anatomy=anatomy, steps=2, method="euler", cfg_scale=s, noise=noise)
        obs = torch.zeros(2, 8, dtype=torch.bool); obs[:, 0] = True
        video = torch.zeros(2, 4, 8, 8, 8); video[:, :, 0] = anatomy
        cond = masked_condition(video, obs, torch.zeros(2, 8, dtype=torch.bool))
        x = noise.clone()
        with torch.no_grad():
            for t0 in (0.0, 0.5):
                t = torch.full((2,), t0)
                v_ef = net(x, t, cond, ef / 100, ef_null=torch.zeros(2, dtype=torch.bool))
                v_null = net(x, t, cond, ef / 100, ef_null=torch.ones(2, dtype=torch.bool))
                x = x + 0.5 * (v_null + s * (v_ef - v_null))
        torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-5)


def test_unet_generation_pads_to_max_frames():
    net = _perturb(tiny_unet(meanflow=True, max_frames=8))
    out = generate(net, [50], anatomy=torch.randn(1, 4, 8, 8), num_frames=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 4, 5, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("kw, match", [
    (dict(num_frames=9), "trained maximum"),
    (dict(ef=120), "percentages"),
    (dict(ef=[30, 40, 50], anatomy=torch.zeros(2, 4, 8, 8)), "1 or 2 values"),
    (dict(anatomy=torch.zeros(2, 3, 8, 8)), "anatomy"),
    (dict(anatomy=torch.zeros(1, 4, 8, 8), observed=torch.zeros(1, 4, 8, 8, 8)), "not both"),
    (dict(observed=torch.zeros(1, 4, 8, 8, 8)), "observed_mask"),
    (dict(observed=torch.zeros(1, 4, 8, 8, 8), observed_mask=torch.zeros(1, 7, dtype=torch.bool)), "observed_mask"),
    (dict(steps=0), "steps"),
    (dict(anatomy=torch.zeros(1, 4, 8, 8), anatomy_frame=8), "anatomy_frame"),
])
def test_generate_bad_input(kw, match):
    kw = {"ef": 50} | kw
    with pytest.raises(ValueError, match=match): generate(_perturb(tiny(meanflow=True)), **kw)


def test_nfe_counts():
    assert nfe(tiny(meanflow=True)) == 1
    assert nfe(tiny(), steps=25, method="midpoint") == 50
    assert nfe(tiny(), steps=10, method="euler", cfg_scale=2.0) == 20


# ---------------------------------------------------------------- save / load, presets

@pytest.mark.parametrize("make", [tiny, tiny_unet])
def test_save_load_round_trip(tmp_path, make):
    net = _perturb(make(meanflow=True))
    save_model(net, tmp_path/"m")
    assert (tmp_path/"m"/"config.json").exists() and list((tmp_path/"m").glob("*.safetensors"))
    back = load_lvfm(tmp_path/"m")
    assert type(back) is type(net) and back.config.meanflow
    kw = dict(anatomy=torch.randn(1, 4, 8, 8), num_frames=8)
    torch.testing.assert_close(generate(back, 45, generator=torch.Generator().manual_seed(3), **kw),
                               generate(net, 45, generator=torch.Generator().manual_seed(3), **kw))


def test_guidance_scale_and_ef_scale_round_trip(tmp_path):
    net = _perturb(tiny(meanflow=True, guidance_scale=6.0, ef_scale=10.0))
    save_model(net, tmp_path/"m")
    back = load_lvfm(tmp_path/"m")
    assert back.config.guidance_scale == 6.0 and back.config.ef_scale == 10.0 and nfe(back) == 2


def test_models_saved_before_ef_scale_keep_their_embedding(tmp_path):
    "A config without `ef_scale` was trained with EF at diffusion-time frequencies (x1000): loading must keep that."
    import json
    net = _perturb(tiny(meanflow=True, ef_scale=1000.0))
    save_model(net, tmp_path/"m")
    cfg = json.loads((tmp_path/"m"/"config.json").read_text()); del cfg["ef_scale"]
    (tmp_path/"m"/"config.json").write_text(json.dumps(cfg))
    back = load_lvfm(tmp_path/"m")
    assert back.config.ef_scale == 1000.0 and back.ef_embed.embed.scale == 1000.0
    kw = dict(anatomy=torch.randn(1, 4, 8, 8), num_frames=8)
    torch.testing.assert_close(generate(back, 45, generator=torch.Generator().manual_seed(3), **kw),
                               generate(net, 45, generator=torch.Generator().manual_seed(3), **kw))


def test_load_lvfm_bad_folder(tmp_path):
    with pytest.raises(FileNotFoundError): load_lvfm(tmp_path)
    (tmp_path/"config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="not an LVFM model"): load_lvfm(tmp_path)


@pytest.mark.parametrize("backbone", ["transformer", "unet"])
def test_build_from_smoke_preset(backbone):
    L = load_preset("smoke")["lvfm"]
    net = build_lvfm(L, latent_channels=4, sample_size=8, meanflow=True, backbone=backbone)
    assert net.config.max_frames == L["frames"] and net.config.meanflow
    with pytest.raises(ValueError, match="backbone"): build_lvfm(L, 4, 8, backbone="gan")


# ---------------------------------------------------------------- EF by area

def test_area_ef_known_ratios():
    T = torch.arange(16)
    ratio = torch.tensor([0.3, 0.6, 1.0])[:, None]
    curves = 100 * (1 - (1 - ratio) * (0.5 - 0.5 * torch.cos(2 * torch.pi * T / 16)))
    ef = area_ef(curves, smooth=1)
    torch.testing.assert_close(ef, 100 * (1 - ratio[:, 0] ** 1.5))
    with pytest.raises(ValueError): area_ef(curves[0])


# ---------------------------------------------------------------- end to end

@pytest.mark.slow
def test_trained_with_padded_short_clips_generates_8_16_32_frames():
    "Train briefly on clips of 6 to 32 real frames (padded to 32); generate 8, 16 and 32 frames with both objectives."
    g = torch.Generator().manual_seed(0)
    T = torch.arange(32)
    items = []
    for i in range(16):                                        # a pulsing blob whose amplitude follows EF
        ef = 20 + 4 * i
        n = [6, 11, 20, 32][i % 4]
        amp = ef / 100
        v = torch.zeros(4, 32, 8, 8)
        v[:, :, 2:6, 2:6] = (1 + amp * torch.sin(2 * torch.pi * T / 12))[None, :, None, None]
        v = v + 0.1 * torch.randn(v.shape, generator=g)
        v[:, n:] = 0
        items.append({"latents": v, "pad_mask": T >= n, "ef": float(ef)})
    loader = DataLoader(items, batch_size=4, shuffle=True)
    for objective in ("flow", "meanflow"):
        torch.manual_seed(0)
        net = tiny(meanflow=objective == "meanflow", max_frames=32)
        res = fit(net, LVFMObjective(objective, p_short=0.3), loader, steps=30, lr=2e-3, ema_decay=None, progress=False)
        first, last = res.history[0]["loss"], res.history[-1]["loss"]
        assert last < first, (objective, first, last)
        model = res.model.eval()
        for n in (8, 16, 32):
            out = generate(model, [40, 70], anatomy=items[0]["latents"][:, 0][None].expand(2, -1, -1, -1), num_frames=n,
                           steps=None if objective == "meanflow" else 4, generator=torch.Generator().manual_seed(n))
            assert out.shape == (2, 4, n, 8, 8) and torch.isfinite(out).all()
        with pytest.raises(ValueError, match="trained maximum"): generate(model, 50, num_frames=33)


# ---------------------------------------------------------------- flow time, EF probe, MeanFlow from the flow model

def test_preset_flow_time_mean_reaches_the_flow_objective_only():
    from echoflow.lvfm import lvfm_objective
    L = dict(load_preset("smoke", {"lvfm.flow_time_mean": -0.8})["lvfm"])
    assert lvfm_objective(L, "flow").time_mean == -0.8
    assert lvfm_objective(L, "meanflow").time_mean is None          # MeanFlow keeps its own draw
    assert load_preset("small")["lvfm"]["flow_time_mean"] < 0


@pytest.mark.parametrize("make", [tiny, tiny_unet])
def test_probe_steering_moves_the_probe_reading_and_round_trips(tmp_path, make):
    from echoflow.lvfm import LatentEFProbe, attach_ef_probe
    torch.manual_seed(0)
    probe = _perturb(LatentEFProbe(4, 8), 0.2)
    flow = _perturb(make())
    anat, x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)), torch.randn(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    asked = torch.tensor([20.0, 80.0])
    attach_ef_probe(flow, probe, scale=3.0, until=0.5)
    kw = dict(anatomy=anat, noise=x0, steps=6)
    steered, plain = generate(flow, asked, **kw), generate(flow, asked, ef_probe_scale=0.0, **kw)
    with torch.no_grad(): err = [(100 * probe(z) - asked).abs().mean().item() for z in (steered, plain)]
    assert err[0] < err[1]
    save_model(flow, tmp_path/"m")
    back = load_lvfm(tmp_path/"m")
    assert back.config.ef_probe_scale == 3.0 and back.config.ef_probe_until == 0.5
    # a reloaded model matches to float rounding (bitwise on some CPUs only: an AMD EPYC differs in the last bits)
    assert torch.allclose(generate(back, asked, **kw), steered, atol=1e-5)
    assert torch.allclose(generate(back, asked, ef_probe_scale=0.0, **kw), plain, atol=1e-5)


def test_probe_steering_acts_only_until_its_flow_time():
    from echoflow.lvfm import LatentEFProbe, probe_guided
    probe = _perturb(LatentEFProbe(4, 8), 0.2)
    v = torch.randn(2, 4, 8, 8, 8)
    fn = lambda x, t: v
    guided = probe_guided(fn, probe, torch.tensor([0.3, 0.7]), scale=2.0, until=0.5)
    x = torch.randn(2, 4, 8, 8, 8)
    assert torch.equal(guided(x, torch.tensor([0.6, 0.6])), v)            # past `until`: the model's velocity untouched
    early = guided(x, torch.tensor([0.2, 0.2]))
    assert (early - v).abs().max() > 0
    # one Newton step (scale 1 at t = 0 on x_hat = x + v) cancels the probe's error to first order
    one = probe_guided(fn, probe, torch.tensor([0.3, 0.7]), scale=1.0, until=0.5)
    with torch.no_grad():
        before = (probe(x + v) - torch.tensor([0.3, 0.7])).abs()
        after = (probe(x + one(x, torch.zeros(2))) - torch.tensor([0.3, 0.7])).abs()
    assert (after < before).all()


def test_meanflow_steps_are_steered_and_probe_errors():
    from echoflow.lvfm import LatentEFProbe, attach_ef_probe
    probe = _perturb(LatentEFProbe(4, 8), 0.2)
    mf = _perturb(tiny(meanflow=True))
    anat, x0 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8, 8)
    attach_ef_probe(mf, probe, scale=1.0, until=0.5)
    assert not torch.equal(generate(mf, [30, 70], anatomy=anat, noise=x0), generate(mf, [30, 70], anatomy=anat, noise=x0, ef_probe_scale=0.0))
    with pytest.raises(ValueError, match="ef_probe_scale"): generate(mf, [30, 70], anatomy=anat, noise=x0, ef_probe_scale=-1.0)
    with pytest.raises(ValueError, match="latent channels"): attach_ef_probe(tiny(), LatentEFProbe(3, 8), scale=1.0)
    with pytest.raises(ValueError, match="multiple of 8"): LatentEFProbe(4, 12)


def test_init_from_flow_copies_weights_and_checks_its_models():
    from echoflow.lvfm import init_from_flow
    fm = _perturb(tiny())
    mf = init_from_flow(tiny(meanflow=True), fm)
    b = batch(); cond = masked_condition(b["latents"], torch.eye(8, dtype=torch.bool)[:2], b["pad_mask"])
    z, t, ef = torch.randn(2, 4, 8, 8, 8), torch.tensor([0.1, 0.8]), torch.tensor([0.3, 0.6])
    with torch.no_grad():
        for r in (torch.tensor([0.5, 0.9]), torch.tensor([1.0, 1.0])):
            assert torch.allclose(mf(z, t, cond, ef, interval=r - t), fm(z, t, cond, ef), atol=1e-6)
    with pytest.raises(ValueError, match="MeanFlow model"): init_from_flow(tiny(), fm)
    with pytest.raises(ValueError, match="SpaceTimeTransformer"): init_from_flow(tiny_unet(meanflow=True), tiny_unet())
    with pytest.raises(ValueError, match="differ"): init_from_flow(tiny(meanflow=True, hidden_size=64), fm)


# ---------------------------------------------------------------- one-step distillation of the steered sampler

def _pairs(n=6):
    from echoflow.lvfm import teacher_pairs
    teacher = _perturb(tiny(), seed=4)
    return teacher_pairs(teacher, torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(7)), torch.linspace(20, 80, n),
                         steps=3, generator=torch.Generator().manual_seed(8))


def test_distilled_meanflow_resumes_exactly_and_learns_the_teacher(tmp_path):
    from echoflow.lvfm import DistilledObjective
    pairs = _pairs()
    items = [{"latents": torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(i)), "pad_mask": torch.zeros(8, dtype=torch.bool),
              "ef": torch.tensor(30.0 + 5 * i)} for i in range(8)]
    loader = DataLoader(items, batch_size=4, shuffle=True)
    def run(out=None, steps=12, crash=None):
        torch.manual_seed(0)
        obj = DistilledObjective(LVFMObjective("meanflow", flow_ratio=0.5), pairs, weight=1.0, batch_size=3)
        def loss_fn(model, batch, step):
            if step == crash: raise KeyboardInterrupt("simulated crash")
            return obj(model, batch, step)
        return fit(_perturb(tiny(meanflow=True)), loss_fn, loader, steps=steps, lr=2e-3, ema_decay=None, progress=False,
                   out_dir=out, checkpoint_every=None if out is None else 4, log_every=4)
    whole = run()
    with pytest.raises(KeyboardInterrupt): run(tmp_path, crash=9)
    again = run(tmp_path)
    assert again.resumed_from == 8
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), whole.model.state_dict().values()))
    assert "distill_mse" in whole.history[-1]
    # the one-step jump moves towards the teacher's videos
    obj = DistilledObjective(LVFMObjective("meanflow"), pairs)
    start = _perturb(tiny(meanflow=True))
    with torch.no_grad():
        before = obj.distill_error(start, torch.arange(6)).mean().item()
        after = obj.distill_error(whole.model, torch.arange(6)).mean().item()
    assert after < before


def test_preset_distillation_keys_and_bad_arguments():
    from echoflow.lvfm import DistilledObjective
    for name in ("smoke", "default", "small", "paper"):
        L = load_preset(name)["lvfm"]
        assert isinstance(L["meanflow_distill_pairs"], int) and L["meanflow_distill_pairs"] >= 0 and L["meanflow_distill_weight"] >= 0
        phase = L["meanflow_distill_probe_steps"]                               # a probe-term phase needs pairs, a probe term and a probe
        assert isinstance(phase, int) and phase >= 0 and L["meanflow_distill_probe_lr"] > 0
        if phase: assert L["meanflow_distill_pairs"] and L["meanflow_distill_probe"] > 0 and L["probe_steps"]
    assert load_preset("smoke")["lvfm"]["meanflow_distill_pairs"] > 0          # the smoke stage exercises the distillation
    assert load_preset("smoke")["lvfm"]["meanflow_distill_probe_steps"] > 0    # ... and the probe-term phase
    with pytest.raises(ValueError, match="weight"): DistilledObjective(LVFMObjective("meanflow"), _pairs(2), weight=float("nan"))
    with pytest.raises(ValueError, match="batch_size"): DistilledObjective(LVFMObjective("meanflow"), _pairs(2), batch_size=0)


def test_distillation_pairs_differ_by_rank_and_repeat_by_step():
    from echoflow.lvfm import DistilledObjective
    obj = DistilledObjective(LVFMObjective("meanflow"), _pairs(6), batch_size=16)
    assert torch.equal(obj.indices(3), obj.indices(3, rank=0)) and torch.equal(obj.indices(3), obj.indices(3))
    assert not torch.equal(obj.indices(3, rank=0), obj.indices(3, rank=1))     # each accelerate process distils its own pairs
    assert not torch.equal(obj.indices(3), obj.indices(4))


def test_distillation_probe_term_pulls_the_jump_to_the_teachers_reading():
    from echoflow.lvfm import DistilledObjective, LatentEFProbe
    pairs = _pairs()
    probe = _perturb(LatentEFProbe(4, 8), 0.2)
    with pytest.raises(ValueError, match="needs an EF probe"): DistilledObjective(LVFMObjective("meanflow"), pairs, probe_weight=1.0)
    with pytest.raises(ValueError, match="probe_weight"): DistilledObjective(LVFMObjective("meanflow"), pairs, probe=probe, probe_weight=-1.0)
    obj = DistilledObjective(LVFMObjective("meanflow"), pairs, weight=0.0, batch_size=6, probe=probe, probe_weight=1.0)
    obj.base = lambda m, b, s: (torch.zeros(()), {})                          # the probe term alone
    assert all(not p.requires_grad for p in obj.probe.parameters()) and obj.probe is not probe   # a frozen copy
    def gap(m):
        with torch.no_grad():
            jump, x_1 = obj.jump(m, torch.arange(6))
            return (probe(jump) - probe(x_1)).abs().mean().item() * 100
    start = _perturb(tiny(meanflow=True))
    before = gap(start)
    res = fit(start, obj, [batch()], steps=40, lr=3e-3, ema_decay=None, progress=False, log_every=10)
    assert "probe_gap" in res.history[-1]
    assert gap(res.model) < 0.5 * before, (before, gap(res.model))
    assert all(torch.equal(a, b) for a, b in zip(obj.probe.state_dict().values(), probe.state_dict().values()))   # the probe is not trained


def test_preset_steering_needs_a_probe(tmp_path):
    """Every preset that steers by the EF probe trains one; the stage refuses a steering scale without a probe, and an EF
    calibration that is not [a, b] with b > 0, naming the key, before any work."""
    for name in ("smoke", "default", "small", "paper"):
        L = load_preset(name)["lvfm"]
        for key in ("probe_scale", "meanflow_probe_scale"):
            assert L[key] >= 0 and (L[key] == 0 or L["probe_steps"] > 0), (name, key)
    papermill = pytest.importorskip("papermill")
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for overrides, message in (({"lvfm.probe_steps": 0, "lvfm.probe_scale": 0.0, "lvfm.meanflow_distill_probe": 0.0,
                                 "lvfm.meanflow_distill_probe_steps": 0}, "lvfm.meanflow_probe_scale > 0 steers by the EF probe"),
                               ({"lvfm.meanflow_probe_scale": -1.0}, "lvfm.meanflow_probe_scale must be a finite number >= 0"),
                               ({"lvfm.meanflow_ef_map": [5.0, 0.0]}, "lvfm.meanflow_ef_map must be"),
                               ({"lvfm.meanflow_ef_map": [5.0]}, "lvfm.meanflow_ef_map must be")):
        with pytest.raises(papermill.PapermillExecutionError, match=message):
            papermill.execute_notebook(str(root/"nbs"/"31_lvfm.ipynb"), str(tmp_path/"out.ipynb"), cwd=str(root/"nbs"), progress_bar=False,
                                       kernel_name="python3", parameters={"preset": "smoke", "overrides": overrides})
