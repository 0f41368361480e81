"LIFM: backbones, conditioning, training, sampling, save/load, frame metrics, and the stage notebook end to end."
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from echoflow.core import VIEWS, EchoVideo, load_preset, save_model
from echoflow.lifm import (NULL_VIEW, STEP_COUNTS, AnatomyFrames, FrameFeatureNet, LatentDiT, LatentUNet, build_lifm,
                           count_parameters, frame_features, frechet_by_steps, image_metrics, lifm_loss, lifm_metrics,
                           load_lifm, mask_to_latent, matched_unet, pick_frames, sample_anatomies, seconds_per_step,
                           train_frame_features, train_lifm, view_labels)
from fixtures import toy_videos

ROOT = Path(__file__).resolve().parents[1]


def tiny_dit(size=8, **kw):
    torch.manual_seed(0)
    return LatentDiT(**({"sample_size": size, "hidden_size": 32, "depth": 2, "heads": 2} | kw))


def tiny_unet(size=8, **kw):
    torch.manual_seed(0)
    return LatentUNet(**({"sample_size": size, "block_out_channels": (8, 16, 16), "attention_head_dim": 8} | kw))


def randomise(model, std=0.05):
    "Give the zero-initialised output layers weights so outputs depend on every input."
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0: p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


# ---------------------------------------------------------------- conditioning inputs

def test_view_labels():
    assert view_labels("A4C", 3).tolist() == [VIEWS.index("A4C")] * 3
    assert view_labels(None, 2).tolist() == [NULL_VIEW] * 2
    assert view_labels(["A2C", "PSAX", None, 0], 4).tolist() == [VIEWS.index("A2C"), VIEWS.index("PSAX"), NULL_VIEW, 0]
    assert view_labels(torch.tensor([1, 2]), 2).tolist() == [1, 2]
    for bad, msg in ((("PLAXX",), "unknown view"), ((NULL_VIEW + 1,), "expected a name"), ((True,), "expected a name"),
                     ((1.5,), "expected a name")):
        with pytest.raises(ValueError, match=msg): view_labels(list(bad), 1)
    with pytest.raises(ValueError, match="expected one view or 3"): view_labels(["A4C", "A2C"], 3)


def test_mask_to_latent_half_area_rule():
    m = np.zeros((16, 16), bool)
    m[0:4, 0:2] = True                      # half of latent pixel (0, 0) at factor 4
    m[4:8, 4:7] = True                      # three quarters of (1, 1)
    m[8:12, 8:9] = True                     # a quarter of (2, 2)
    out = mask_to_latent(m, (4, 4))
    assert out.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="mask"): mask_to_latent(np.zeros((2, 4, 4)), (2, 2))


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("make", [tiny_dit, tiny_unet])
@pytest.mark.parametrize("size", [7, 8, 14, 16])
@pytest.mark.parametrize("mask_channel", [True, False])
def test_backbone_shapes(make, size, mask_channel):
    model = make(size, mask_channel=mask_channel).eval()
    z = torch.randn(3, 4, size, size)
    mask = torch.ones(3, 1, size, size) if mask_channel else None
    with torch.no_grad():
        for t in (0.3, torch.rand(3)):
            assert model(z, t, class_labels=torch.tensor([0, 1, NULL_VIEW]), mask=mask).shape == z.shape
        assert model(z, 0.5).shape == z.shape                                  # no labels = null view, no mask = zeros


def test_dit_starts_at_zero_and_patch_size_one():
    model = tiny_dit(patch_size=1)
    with torch.no_grad(): assert torch.equal(model(torch.randn(2, 4, 8, 8), 0.4), torch.zeros(2, 4, 8, 8))


@pytest.mark.parametrize("make", [tiny_dit, tiny_unet])
def test_every_input_changes_the_output(make):
    model = randomise(make()).eval()
    z, t = torch.randn(2, 4, 8, 8), torch.full((2,), 0.5)
    with torch.no_grad():
        base = model(z, t, class_labels=torch.tensor([0, 0]))
        assert not torch.allclose(base, model(z, t, class_labels=torch.tensor([1, 1])), atol=1e-6)
        assert not torch.allclose(base, model(z, t, class_labels=torch.tensor([NULL_VIEW] * 2)), atol=1e-6)
        assert not torch.allclose(base, model(z, torch.full((2,), 0.9), class_labels=torch.tensor([0, 0])), atol=1e-6)
        assert not torch.allclose(base, model(z, t, class_labels=torch.tensor([0, 0]), mask=torch.ones(2, 1, 8, 8)), atol=1e-6)
        # all-zero mask is the same as no mask
        assert torch.equal(base, model(z, t, class_labels=torch.tensor([0, 0]), mask=torch.zeros(2, 1, 8, 8)))
        # samples do not mix
        one = model(z[:1], t[:1], class_labels=torch.tensor([0]))
        assert torch.allclose(one, base[:1], atol=1e-5)


@pytest.mark.parametrize("make", [tiny_dit, tiny_unet])
def test_backbone_bad_input(make):
    model = make()
    z = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="sample"): model(torch.randn(2, 3, 8, 8), 0.5)
    with pytest.raises(ValueError, match="timestep"): model(z, torch.rand(3))
    with pytest.raises(ValueError, match="class_labels"): model(z, 0.5, class_labels=torch.tensor([0, NULL_VIEW + 1]))
    with pytest.raises(ValueError, match="class_labels"): model(z, 0.5, class_labels=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="mask"): model(z, 0.5, mask=torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="mask_channel=False"): make(mask_channel=False)(z, 0.5, mask=torch.ones(2, 1, 8, 8))


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible"): LatentDiT(hidden_size=30, heads=4)
    with pytest.raises(ValueError, match="multiple of 4"): LatentDiT(hidden_size=18, heads=2)
    with pytest.raises(ValueError, match="one flag"): LatentUNet(block_out_channels=(8, 16), attention=(False,))
    with pytest.raises(ValueError, match="norm_num_groups"): LatentUNet(block_out_channels=(12, 24), attention=(False, True))
    with pytest.raises(ValueError, match="backbone"): build_lifm(load_preset("smoke")["lifm"], (4, 8, 8), "vit")
    with pytest.raises(ValueError, match="square"): build_lifm(load_preset("smoke")["lifm"], (4, 8, 6))


@pytest.mark.parametrize("size, hidden, depth", [(14, 128, 4), (16, 192, 6)])
def test_matched_unet_has_a_similar_size(size, hidden, depth):
    dit = LatentDiT(sample_size=size, hidden_size=hidden, depth=depth, heads=4)
    unet = matched_unet(dit)
    ratio = count_parameters(unet) / count_parameters(dit)
    assert 0.7 < ratio < 1.3, ratio
    w = unet.config.block_out_channels[0]
    for other in (w - 8, w + 8):            # no neighbouring width is closer
        if other < 8: continue
        cand = LatentUNet(sample_size=size, block_out_channels=(other, 2 * other, 2 * other), attention_head_dim=min(32, 2 * other))
        assert abs(count_parameters(cand) - count_parameters(dit)) >= abs(count_parameters(unet) - count_parameters(dit))


@pytest.mark.parametrize("make", [tiny_dit, tiny_unet])
def test_save_load_round_trip(tmp_path, make):
    model = randomise(make()).eval()
    save_model(model, tmp_path/"m")
    loaded = load_lifm(tmp_path/"m")
    assert type(loaded) is type(model) and not loaded.training
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(z, 0.3, class_labels=torch.tensor([0, 2])), loaded(z, 0.3, class_labels=torch.tensor([0, 2])))
    a = sample_anatomies(model, 3, "A2C", steps=3, generator=torch.Generator().manual_seed(5))
    b = sample_anatomies(loaded, 3, "A2C", steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_load_lifm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"): load_lifm(tmp_path)
    save_model(FrameFeatureNet(image_size=16, width=4, bottleneck=4), tmp_path/"f")
    with pytest.raises(ValueError, match="not a LIFM model"): load_lifm(tmp_path/"f")
    (tmp_path/"bad").mkdir(); (tmp_path/"bad"/"config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"): load_lifm(tmp_path/"bad")


# ---------------------------------------------------------------- training frames

def latent_videos(n=6, T=5, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, 4, size, size, generator=g) for _ in range(n)]


def test_anatomy_frames_batches_and_masks():
    lat = latent_videos()
    masks = [{2: torch.ones(8, 8)} if i % 2 == 0 else {} for i in range(6)]
    frames = AnatomyFrames(lat, ["A4C", "A2C"] * 3, batch_size=16, masks=masks, mask_prob=1.0)
    b = frames.batch(torch.Generator().manual_seed(0))
    assert b["latent"].shape == (16, 4, 8, 8) and b["view"].shape == (16,) and b["mask"].shape == (16, 1, 8, 8)
    all_frames = torch.cat(lat)
    for i in range(16):
        matches = [(v, f) for v in range(6) for f in range(5) if torch.equal(lat[v][f], b["latent"][i])]
        assert len(matches) == 1
        v, f = matches[0]
        assert b["view"][i] == VIEWS.index(["A4C", "A2C"][v % 2])
        # mask_prob=1: traced videos always give their traced frame and its mask; untraced ones give none
        assert (f == 2 and b["mask"][i].all()) if v % 2 == 0 else not b["mask"][i].any()
    assert all_frames.shape == (30, 4, 8, 8)
    none = AnatomyFrames(lat, ["A4C"] * 6, batch_size=8, masks=masks, mask_prob=0.0).batch(torch.Generator().manual_seed(0))
    assert not none["mask"].any()
    # re-iterable, repeatable under torch's global seed, len = batches per epoch
    frames = AnatomyFrames(lat, ["A4C"] * 6, batch_size=2)
    assert len(frames) == 3 and len(list(frames)) == 3 and len(list(frames)) == 3
    torch.manual_seed(3); a = next(iter(frames))["latent"]
    torch.manual_seed(3); assert torch.equal(a, next(iter(frames))["latent"])


def test_anatomy_frames_bad_input():
    lat = latent_videos(2)
    with pytest.raises(ValueError, match="no videos"): AnatomyFrames([], [], 4)
    with pytest.raises(ValueError, match="views"): AnatomyFrames(lat, ["A4C"], 4)
    with pytest.raises(ValueError, match="masks"): AnatomyFrames(lat, ["A4C"] * 2, 4, masks=[{}])
    with pytest.raises(ValueError, match="batch_size"): AnatomyFrames(lat, ["A4C"] * 2, 0)
    with pytest.raises(ValueError, match="mask_prob"): AnatomyFrames(lat, ["A4C"] * 2, 4, mask_prob=1.5)
    with pytest.raises(ValueError, match="one frame shape"): AnatomyFrames([lat[0], torch.randn(5, 4, 6, 6)], ["A4C"] * 2, 4)
    with pytest.raises(ValueError, match="unknown view"): AnatomyFrames(lat, ["A5C"] * 2, 4)


def test_anatomy_frames_from_videos():
    videos = toy_videos(3, frames=6, height=32, width=32)
    lat = {v.name: torch.randn(6, 4, 8, 8) for v in videos}
    frames = AnatomyFrames.from_videos(videos, lat, batch_size=4, mask_prob=1.0)
    assert len(frames.masks) == 3 and all(sorted(m) == list(range(6)) for m in frames.masks)  # toy videos: every frame traced
    expected = mask_to_latent(videos[0].lv_masks[3], (8, 8))
    assert torch.equal(frames.masks[0][3], expected) and expected.sum() > 0
    with pytest.raises(ValueError, match="no latents"): AnatomyFrames.from_videos(videos, {videos[0].name: lat[videos[0].name]}, 4)


def test_pick_frames():
    videos = toy_videos(2, frames=4, height=32, width=32)
    x = pick_frames(videos, 10, torch.Generator().manual_seed(0))
    assert x.shape == (10, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, pick_frames(videos, 10, torch.Generator().manual_seed(0)))
    pool = {tuple(f.reshape(-1).tolist()) for v in videos for f in v.frames}
    assert all(tuple(((f[0] + 1) * 127.5).round().to(torch.uint8).reshape(-1).tolist()) in pool for f in x)
    assert pick_frames(videos, 3, size=16).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="empty"): pick_frames([], 3)
    with pytest.raises(ValueError, match="positive"): pick_frames(videos, 0)


# ---------------------------------------------------------------- training and sampling

def two_pattern_frames(batch_size=32):
    "View A4C frames are +pattern, view A2C frames -pattern, with a little noise: a conditional task a model can learn fast."
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(4, 8, 8, generator=g)
    lat = [s * pattern + 0.05 * torch.randn(6, 4, 8, 8, generator=g) for s in (1, -1) for _ in range(8)]
    return AnatomyFrames(lat, ["A4C"] * 8 + ["A2C"] * 8, batch_size=batch_size), pattern


def test_loss_at_init_and_condition_dropout():
    model = tiny_dit()
    batch = {"latent": torch.randn(64, 4, 8, 8), "view": torch.zeros(64, dtype=torch.long), "mask": torch.zeros(64, 1, 8, 8)}
    torch.manual_seed(0)
    loss, logs = lifm_loss(model, batch)
    assert abs(loss.item() - 2.0) < 0.3 and logs == {}    # zero velocity: E|x_1 - x_0|^2 = 2 per element
    seen = []
    class Spy(torch.nn.Module):
        config = model.config
        def forward(self, x, t, class_labels=None, mask=None): seen.append(class_labels.clone()); return torch.zeros_like(x)
    lifm_loss(Spy(), batch, cond_dropout=1.0); lifm_loss(Spy(), batch, cond_dropout=0.0)
    assert (seen[0] == NULL_VIEW).all() and (seen[1] == 0).all()
    with pytest.raises(ValueError, match="cond_dropout"): train_lifm(model, [batch], steps=1, lr=1e-3, cond_dropout=1.0)


@pytest.mark.parametrize("make, steps", [(tiny_dit, 150), (tiny_unet, 120)])
def test_tiny_training_learns_the_conditional_data(make, steps):
    frames, pattern = two_pattern_frames()
    model = make()
    result = train_lifm(model, frames, steps=steps, lr=3e-3, cond_dropout=0.1, progress=False, log_every=10, ema_decay=0.9)
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    lifm = result.ema
    for view, sign in (("A4C", 1), ("A2C", -1)):
        z = sample_anatomies(lifm, 16, view, steps=10, generator=torch.Generator().manual_seed(0))
        err_right = (z - sign * pattern).pow(2).mean().item()
        err_wrong = (z + sign * pattern).pow(2).mean().item()
        assert err_right < 0.35 * err_wrong, (view, err_right, err_wrong)


def test_sampling_repeatable_batched_and_guided():
    model = randomise(tiny_dit()).eval()
    g = lambda s=1: torch.Generator().manual_seed(s)
    a = sample_anatomies(model, 5, "A4C", steps=4, generator=g())
    assert a.shape == (5, 4, 8, 8)
    assert torch.equal(a, sample_anatomies(model, 5, "A4C", steps=4, generator=g()))
    assert not torch.allclose(a, sample_anatomies(model, 5, "A4C", steps=4, generator=g(2)))
    assert torch.allclose(a, sample_anatomies(model, 5, "A4C", steps=4, generator=g(), batch_size=2), atol=1e-5)
    # cfg 0 ignores the view (= sampling the null view); cfg 1 is the plain conditional model
    assert torch.allclose(sample_anatomies(model, 5, "A4C", steps=4, cfg_scale=0.0, generator=g()),
                          sample_anatomies(model, 5, None, steps=4, generator=g()), atol=1e-5)
    guided = sample_anatomies(model, 5, "A4C", steps=4, cfg_scale=3.0, generator=g())
    assert not torch.allclose(guided, a, atol=1e-4)
    # CFG by hand for one Euler step: v_null + s (v_cond - v_null) from the same noise
    x0 = torch.randn(5, 4, 8, 8, generator=g())
    with torch.no_grad():
        t = torch.zeros(5)
        v_c, v_n = model(x0, t, class_labels=view_labels("A4C", 5)), model(x0, t, class_labels=view_labels(None, 5))
    assert torch.allclose(sample_anatomies(model, 5, "A4C", steps=1, cfg_scale=3.0, generator=g()), x0 + v_n + 3 * (v_c - v_n), atol=1e-5)
    # the midpoint solver is wired through
    assert not torch.allclose(a, sample_anatomies(model, 5, "A4C", steps=4, method="midpoint", generator=g()), atol=1e-5)
    assert model.training is False


def test_sampling_with_masks():
    model = randomise(tiny_dit()).eval()
    g = lambda: torch.Generator().manual_seed(0)
    m = torch.zeros(8, 8); m[2:6, 3:5] = 1
    one = sample_anatomies(model, 3, "A4C", steps=3, mask=m, generator=g())
    assert torch.allclose(one, sample_anatomies(model, 3, "A4C", steps=3, mask=m.expand(3, 8, 8), generator=g()))
    assert torch.allclose(one, sample_anatomies(model, 3, "A4C", steps=3, mask=m.expand(3, 1, 8, 8), generator=g(), cfg_scale=1.0))
    assert not torch.allclose(one, sample_anatomies(model, 3, "A4C", steps=3, generator=g()))
    assert torch.equal(sample_anatomies(model, 3, "A4C", steps=3, mask=torch.zeros(8, 8), generator=g()),
                       sample_anatomies(model, 3, "A4C", steps=3, generator=g()))
    guided = sample_anatomies(model, 3, "A4C", steps=3, mask=m, cfg_scale=2.0, generator=g(), batch_size=2)
    assert guided.shape == (3, 4, 8, 8)
    with pytest.raises(ValueError, match="mask"): sample_anatomies(model, 3, "A4C", mask=torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="mask"): sample_anatomies(model, 3, "A4C", mask=torch.ones(6, 6))
    with pytest.raises(ValueError, match="mask_channel=False"):
        sample_anatomies(tiny_dit(mask_channel=False), 2, "A4C", mask=torch.ones(8, 8))


def test_sampling_bad_input():
    model = tiny_dit()
    with pytest.raises(ValueError, match="n must"): sample_anatomies(model, 0)
    with pytest.raises(ValueError, match="cfg_scale"): sample_anatomies(model, 2, cfg_scale=-1.0)
    with pytest.raises(ValueError, match="unknown view"): sample_anatomies(model, 2, "A3C")
    with pytest.raises(ValueError, match="steps"): sample_anatomies(model, 2, steps=0)
    with pytest.raises(ValueError, match="method"): sample_anatomies(model, 2, method="rk45")


def test_seconds_per_step_leaves_the_model_alone():
    model = tiny_dit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"latent": torch.randn(4, 4, 8, 8), "view": torch.zeros(4, dtype=torch.long), "mask": torch.zeros(4, 1, 8, 8)}
    assert seconds_per_step(model, batch, repeats=2) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- frame metrics

def test_frame_feature_net_and_training():
    videos = toy_videos(4, frames=8, height=32, width=32)
    frames = pick_frames(videos, 64, torch.Generator().manual_seed(0))
    net = FrameFeatureNet(image_size=32, width=8, bottleneck=16)
    assert net(frames[:3]).shape == (3, net.feature_dim) and net.feature_dim == 16 + 8 + 16 + 32
    with pytest.raises(ValueError, match="frames"): net(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"): FrameFeatureNet(image_size=36)
    trained = train_frame_features(frames, steps=40, batch_size=16, width=8, bottleneck=16)
    assert not trained.training
    with torch.no_grad():
        err = lambda n: (n.decode(n.encode(frames)[0]) - frames).abs().mean().item()
        assert err(trained) < 0.7 * err(net)
    with pytest.raises(ValueError, match="square"): train_frame_features(torch.randn(4, 1, 8, 6))
    with pytest.raises(ValueError, match="at least 2"): train_frame_features(torch.randn(1, 1, 8, 8))


def test_image_metrics_order_real_close_far():
    videos = toy_videos(4, frames=8, height=32, width=32)
    g = torch.Generator().manual_seed(0)
    net = train_frame_features(pick_frames(videos, 128, g), steps=30, batch_size=32, width=8, bottleneck=16)
    a, b = pick_frames(videos, 96, g), pick_frames(videos, 96, g)
    same = image_metrics(net, a, a)
    assert same["frechet"] < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    real = image_metrics(net, a, b)
    noisy = image_metrics(net, a, (b + 0.5 * torch.randn(b.shape, generator=g)).clamp(-1, 1))
    noise = image_metrics(net, a, torch.rand(96, 1, 32, 32, generator=g) * 2 - 1)
    assert real["frechet"] < noisy["frechet"] < noise["frechet"]
    assert real["precision"] > 0.5 and noise["precision"] < 0.1
    assert frame_features(net, a, batch_size=7).shape == frame_features(net, a).shape


def test_frechet_by_steps_and_metrics_json():
    videos = toy_videos(2, frames=4, height=32, width=32)
    net = FrameFeatureNet(image_size=32, width=8, bottleneck=8).eval()
    model = randomise(tiny_dit()).eval()
    decode = lambda z: torch.tanh(torch.nn.functional.interpolate(z[:, :1], size=32))
    ref = pick_frames(videos, 12)
    table = frechet_by_steps(model, net, decode, ref, ["A4C"] * 12, step_counts=(1, 3), seed=4)
    assert sorted(table) == [1, 3] and all(set(v) == {"frechet", "precision", "recall"} for v in table.values())
    assert table == frechet_by_steps(model, net, decode, ref, ["A4C"] * 12, step_counts=(1, 3), seed=4)
    floor = {"frechet": 0.5, "precision": 0.9, "recall": 0.8}
    m = lifm_metrics(table[3], table, floor, floor, {"dit": {"frechet": 1.0, "steps": 10}}, sample_steps=3)
    assert m["frechet"] == table[3]["frechet"] and m["frechet_steps_1"] == table[1]["frechet"]
    assert m["frechet_floor"] == 0.5 and m["dit_steps"] == 10 and m["sample_steps"] == 3
    assert all(isinstance(v, (int, float)) for v in m.values())
    json.dumps(m)
    assert STEP_COUNTS == (1, 2, 5, 10, 25, 50)


# ---------------------------------------------------------------- the stage notebook

def run_stage(tmp_path, **params):
    papermill = pytest.importorskip("papermill")
    out = tmp_path/"lifm"
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(ROOT/"nbs"/"30_lifm.ipynb"), str(tmp_path/"out.ipynb"), cwd=str(ROOT/"nbs"),
                                   parameters={"out_dir": str(out), **params}, progress_bar=False, kernel_name="python3")
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return out


@pytest.mark.slow
def test_stage_on_a_latent_cache_with_an_avae(tmp_path):
    "The pipeline's path: dataset on disk -> a (random-weight) A-VAE -> latent cache -> the lifm stage, with the UNet comparison."
    from echoflow.data import write_echonet
    from echoflow.vae import build_vae, encode_dataset
    videos = toy_videos(6, frames=6, height=32, width=32, splits=("TRAIN", "TRAIN", "TRAIN", "TRAIN", "VAL", "TEST"))
    data = write_echonet(tmp_path/"data", videos)
    cfg = load_preset("smoke")
    cfg["vae"]["block_out_channels"] = [8, 8, 8]
    vae = build_vae(cfg, size=32).eval()
    save_model(vae, tmp_path/"vae"/"model")
    encode_dataset(vae, data, tmp_path/"latents", batch_size=8, progress=False)
    overrides = {"lifm.steps": 20, "lifm.feature_steps": 10, "lifm.metric_samples": 40, "lifm.compare_unet": True,
                 "lifm.sample_steps": 3}
    out = run_stage(tmp_path, overrides=overrides, latents_dir=str(tmp_path/"latents"), vae_dir=str(tmp_path/"vae"),
                    data_dir=str(data))
    metrics = json.loads((out/"metrics.json").read_text())
    for key in ["frechet", "precision", "recall", "frechet_floor", "frechet_real"] + [f"frechet_steps_{s}" for s in STEP_COUNTS]:
        assert isinstance(metrics[key], float) and np.isfinite(metrics[key]), key
    assert metrics["frechet"] == metrics["frechet_steps_3"] and metrics["unet_steps"] >= 1 and metrics["dit_steps"] == 20
    assert isinstance(load_lifm(out/"model"), LatentDiT) and isinstance(load_lifm(out/"unet_model"), LatentUNet)
    assert (out/"samples.png").stat().st_size > 0 and (out/"frechet_steps.png").stat().st_size > 0


@pytest.mark.slow
def test_stage_in_memory_writes_its_outputs(tmp_path):
    pytest.importorskip("echoflow.phantom")
    out = run_stage(tmp_path, overrides={"lifm.steps": 10, "lifm.feature_steps": 10, "lifm.metric_samples": 32})
    metrics = json.loads((out/"metrics.json").read_text())
    assert np.isfinite(metrics["frechet"]) and metrics["sample_steps"] == load_preset("smoke")["lifm"]["sample_steps"]
    assert isinstance(load_lifm(out/"model"), LatentDiT)
