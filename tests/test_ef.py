"Tests of echoflow.ef: the R(2+1)D regressor, its clip protocol, training on EchoNet-layout folders, evaluation, the phantom learnability."
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from echoflow.core import EchoVideo, load_model, load_preset, save_model
from echoflow.data import read_echonet, write_echonet
from echoflow.ef import (Block2Plus1d, Conv2Plus1d, EFRegressor, ef_clips, ef_loss, evaluate_ef, first_clips, flat_metrics,
                         midplanes, pixel_stats, predict_ef, results_table, train_ef_regressor)


def beating_disk_videos(n_patients=8, videos_per_patient=2, frames=16, size=32, fps=32.0, cycle_frames=8, seed=0,
                        splits=("TRAIN", "TRAIN", "TRAIN", "TRAIN", "VAL", "TEST"), noise=15.0):
    "A dark disk (the 'LV') whose area follows a cosine beat with the patient's EF, in noisy tissue; splits by patient."
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for p in range(n_patients):
        ef = float(np.clip(g.normal(55, 12), 15, 85))
        for v in range(videos_per_patient):
            r_ed = size * 0.3 * g.uniform(0.8, 1.1); r_es = r_ed * math.sqrt(1 - ef / 100)
            phase = g.uniform(0, 2 * np.pi)
            frames_ = []
            for t in range(frames):
                c = 0.5 * (1 + np.cos(2 * np.pi * t / cycle_frames + phase))
                r = r_es + (r_ed - r_es) * c
                img = 120 + noise * g.standard_normal((size, size))
                img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r ** 2] = 20
                frames_.append(np.clip(img, 0, 255).astype(np.uint8))
            out.append(EchoVideo(name=f"S{seed}P{p:03d}V{v}", frames=np.stack(frames_), fps=fps, ef=ef, patient_id=f"S{seed}P{p:03d}",
                                 split=splits[p % len(splits)]))
    return out


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ef")/"real"
    return write_echonet(root, beating_disk_videos(), tracings=False)


def tiny_cfg(**ef):
    cfg = load_preset("smoke")
    cfg["ef"] |= {"frames": 8, "period": 1, "fps": 0.0, "size": 0, "width": 4, "steps": 4, "batch_size": 4, "lr": 1e-3, "test_clips": 0} | ef
    return cfg


# ---------------------------------------------------------------- network
def test_midplanes_matches_full_convolution_parameter_count():
    for i, o in [(1, 4), (16, 16), (16, 32), (64, 128)]:
        pair = Conv2Plus1d(i, o)
        n_pair = sum(p.numel() for p in pair.parameters() if p.ndim > 1)
        assert abs(n_pair / (27 * i * o) - 1) < 0.1, (i, o, midplanes(i, o))


def test_block_shapes_and_strides():
    assert Block2Plus1d(4, 4)(torch.randn(1, 4, 8, 16, 16)).shape == (1, 4, 8, 16, 16)
    assert Block2Plus1d(4, 8, 2)(torch.randn(1, 4, 8, 16, 16)).shape == (1, 8, 4, 8, 8)


@pytest.mark.parametrize("width, frames, size", [(4, 8, 32), (8, 16, 64), (4, 3, 20)])
def test_regressor_shapes(width, frames, size):
    m = EFRegressor(width=width, frames=frames).eval()
    x = torch.randn(2, 1, frames, size, size)
    assert m(x).shape == (2,)
    assert m.features(x).shape == (2, 8 * width)


def test_regressor_full_width_is_r2plus1d18_sized():
    n = sum(p.numel() for p in EFRegressor(width=64).parameters())
    assert 31.2e6 < n < 31.4e6     # torchvision r2plus1d_18: 31.5M, of which 0.2M is its 400-way Kinetics head


def test_regressor_starts_at_mean_ef_and_normalises():
    m = EFRegressor(width=4, ef_mean=60.0, pixel_mean=-0.5, pixel_std=0.25).eval()
    assert torch.allclose(m(torch.randn(3, 1, 8, 16, 16)), torch.full((3,), 0.6))
    assert m.config.pixel_mean == -0.5


def test_regressor_save_load_round_trip(tmp_path):
    m = EFRegressor(width=4, frames=8, period=3, fps=16.0, size=24, pixel_mean=0.1, pixel_std=0.5)
    with torch.no_grad():
        for p in m.parameters(): p.add_(0.01 * torch.randn_like(p))
    m.eval()
    save_model(m, tmp_path/"m")
    back = load_model(EFRegressor, tmp_path/"m").eval()
    x = torch.randn(2, 1, 8, 24, 24)
    assert torch.allclose(back(x), m(x), atol=1e-6)
    assert (back.config.frames, back.config.period, back.config.fps, back.config.size) == (8, 3, 16.0, 24)
    assert (tmp_path/"m"/"diffusion_pytorch_model.safetensors").exists()


@pytest.mark.parametrize("kw, message", [({"width": 0}, "width"), ({"frames": 0}, "frames"), ({"period": 0}, "period"),
                                         ({"layers": (1, 1)}, "layers"), ({"pixel_std": 0.0}, "pixel_std")])
def test_regressor_bad_config(kw, message):
    with pytest.raises(ValueError, match=message): EFRegressor(**kw)


def test_regressor_bad_input_shape():
    with pytest.raises(ValueError, match=r"expected clips \(B, 1, T, H, W\)"): EFRegressor(width=4)(torch.zeros(2, 8, 16, 16))


# ---------------------------------------------------------------- clips
def test_ef_clips_protocol(tiny_dataset):
    src = read_echonet(tiny_dataset)
    data = ef_clips(src, {"frames": 8, "period": 1, "fps": 0.0, "size": 0}, split="TEST")
    item = data[0]
    assert item["video"].shape == (16 - 8 + 1, 1, 8, 32, 32)          # all clips: 9 start positions
    assert not item["pad_mask"].any()
    # resampled to 16 fps: every 2nd source frame, 8 frames span 15 of the 16 source frames: 2 start positions
    item = ef_clips(src, {"frames": 8, "period": 1, "fps": 16.0, "size": 24}, split="TEST")[0]
    assert item["video"].shape == (2, 1, 8, 24, 24)
    x = to_frames(src.select("TEST")[0])
    assert torch.allclose(item["video"][0, 0, 1], torch.nn.functional.interpolate(x[2][None, None], size=(24, 24), mode="bilinear", antialias=True, align_corners=False)[0, 0], atol=0.02)
    train = ef_clips(src, {"frames": 8, "period": 1, "fps": 0.0, "size": 0}, train=True)
    assert train[0]["video"].shape == (1, 8, 32, 32) and train.shift_pad == round(12 / 112 * 32)


def to_frames(video):
    return torch.from_numpy(video.frames).float() / 127.5 - 1


@pytest.mark.parametrize("spec, message", [({"frames": 0, "period": 1}, "frames"), ({"frames": 8, "period": 0}, "period"),
                                           ({"frames": 8, "period": 1, "fps": -1.0}, "fps")])
def test_ef_clips_bad_protocol(tiny_dataset, spec, message):
    with pytest.raises(ValueError, match=message): ef_clips(tiny_dataset, spec)


def test_pixel_stats(tiny_dataset):
    src = read_echonet(tiny_dataset)
    mean, std = pixel_stats(src, max_videos=100)
    allx = np.concatenate([src.load(i).frames.ravel() for i in range(len(src))]).astype(float) / 127.5 - 1
    assert mean == pytest.approx(allx.mean(), abs=1e-6) and std == pytest.approx(allx.std(), rel=1e-4)


# ---------------------------------------------------------------- training and evaluation
def test_train_and_evaluate_on_a_folder(tiny_dataset, tmp_path):
    cfg = tiny_cfg(steps=3)
    res = train_ef_regressor(tiny_dataset, cfg, out_dir=tmp_path/"run")
    assert res.step == 3 and math.isfinite(res.history[-1]["loss"])
    assert (tmp_path/"run"/"model"/"config.json").exists()
    model = load_model(EFRegressor, tmp_path/"run"/"model")
    assert model.config.width == 4 and model.config.frames == 8
    src = read_echonet(tiny_dataset)
    # the initial bias is the training mean EF
    train_ef = src.select("TRAIN").table.EF.mean()
    assert EFRegressor.from_config(model.config).head.bias.item() * 100 == pytest.approx(train_ef, rel=1e-5)
    m, pred = evaluate_ef(model, src, split="TEST", n_boot=50)
    assert m["n"] == len(src.select("TEST")) == len(pred)
    assert set(pred.columns) >= {"name", "patient_id", "ef", "ef_pred", "clips"} and (pred.clips == 9).all()


def test_prediction_is_the_mean_over_clips(tiny_dataset):
    src = read_echonet(tiny_dataset)
    torch.manual_seed(0)
    model = EFRegressor(width=4, frames=8, period=1)
    with torch.no_grad(): model.head.weight.normal_()
    model.eval()
    pred = predict_ef(model, src, split="TEST", clips="all")
    x = to_frames(src.select("TEST")[0])
    clips = torch.stack([x[s:s + 8] for s in range(9)])[:, None]
    with torch.no_grad(): expected = model(clips).mean().item() * 100
    assert pred.ef_pred.iloc[0] == pytest.approx(expected, rel=1e-5)
    three = predict_ef(model, src, split="TEST", clips=3)
    assert (three.clips == 3).all()


def test_training_on_several_sources_and_bad_sources(tiny_dataset, tmp_path):
    other = write_echonet(tmp_path/"other", beating_disk_videos(n_patients=6, frames=8, seed=3), tracings=False)
    res = train_ef_regressor([tiny_dataset, other], tiny_cfg(steps=2))
    assert res.step == 2
    no_train = write_echonet(tmp_path/"no_train", beating_disk_videos(n_patients=2, splits=("TEST",)), tracings=False)
    with pytest.raises(ValueError, match="no TRAIN videos"): train_ef_regressor(no_train, tiny_cfg())
    with pytest.raises(ValueError, match="sources must be"): train_ef_regressor([42], tiny_cfg())


def test_missing_ef_is_refused(tmp_path):
    root = write_echonet(tmp_path/"noef", beating_disk_videos(n_patients=6), tracings=False)
    fl = pd.read_csv(root/"FileList.csv"); fl.loc[0, "EF"] = np.nan; fl.to_csv(root/"FileList.csv", index=False)
    with pytest.raises(ValueError, match="EF"): train_ef_regressor(read_echonet(root, require_ef=False), tiny_cfg())


def test_first_clips_and_loss(tiny_dataset):
    clips, groups, ef = first_clips(tiny_dataset, {"frames": 8, "period": 1}, split="TRAIN")
    src = read_echonet(tiny_dataset).select("TRAIN")
    assert clips.shape == (len(src), 1, 8, 32, 32) and sorted(groups) == sorted(src.table.PatientID.astype(str))
    assert sorted(ef) == pytest.approx(sorted(src.table.EF.astype(float)))
    model = EFRegressor(width=4, frames=8)
    loss, logs = ef_loss(model, {"video": clips[:4], "ef": torch.tensor([55.6] * 4, dtype=torch.float64)}, 0)
    assert loss.item() == pytest.approx(0, abs=1e-10) and logs["mae"] == pytest.approx(0, abs=1e-5)


def test_tables():
    m = {"real": {"n": 10, "r2": 0.8, "r2_lo": 0.7, "r2_hi": 0.9, "mae": 4.0, "mae_lo": 3.0, "mae_hi": 5.0, "rmse": 5.0, "rmse_lo": 4.0, "rmse_hi": 6.0},
         "synthetic": {"n": 10, "r2": 0.5, "mae": 6.0, "rmse": 7.0}}
    t = results_table(m)
    assert t.loc["real", "MAE"] == "4.0 [3.0, 5.0]" and t.loc["synthetic", "R²"] == "0.50"
    f = flat_metrics(m)
    assert f["r2_real_lo"] == 0.7 and f["mae_synthetic"] == 6.0 and f["n_test_real"] == 10
    json.dumps(f)


@pytest.mark.slow
def test_regressor_learns_a_learnable_toy(tmp_path):
    "On beating disks whose area ratio is the EF, a few hundred steps beat the mean predictor by far."
    root = write_echonet(tmp_path/"toy", beating_disk_videos(n_patients=60, videos_per_patient=2, seed=1), tracings=False)
    cfg = tiny_cfg(width=8, steps=250, batch_size=8, lr=2e-3)
    res = train_ef_regressor(root, cfg)
    m, pred = evaluate_ef(res.ema, root, split="TEST", n_boot=200)
    baseline = np.abs(pred.ef - read_echonet(root).select("TRAIN").table.EF.mean()).mean()
    print(f"toy: MAE {m['mae']:.2f} vs mean predictor {baseline:.2f}, R^2 {m['r2']:.2f}")
    assert m["mae"] < 0.6 * baseline and m["r2"] > 0.5


@pytest.mark.slow
def test_phantom_learnability():
    "Issue 3's learnability check: the default-preset regressor, 800 steps (a few minutes) on phantom videos, MAE < 6 on held-out patients."
    pytest.importorskip("echoflow.phantom")
    from echoflow.ef import phantom_learnability
    out = phantom_learnability("default", steps=800, seed=0)   # the preset's own budget (250 steps) is set by the 20-min demo
    print(f"phantom learnability: MAE {out['mae']:.2f} [{out['mae_lo']:.2f}, {out['mae_hi']:.2f}], R^2 {out['r2']:.2f}, "
          f"{out['n']} held-out videos, {out['steps']} steps in {out['train_seconds']:.0f} s")
    assert out["mae"] < 6


def test_lvfm_adherence_runs_on_saved_stage_folders(tiny_dataset, tmp_path, monkeypatch):
    "Untrained tiny A-VAE and LVFM models saved like the stages save them: adherence keys come back finite."
    from echoflow.ef import lvfm_adherence
    from echoflow.lvfm import build_lvfm
    from echoflow.vae import build_vae, encode_dataset
    cfg = load_preset("smoke")
    vae = build_vae(cfg, size=32)
    save_model(vae, tmp_path/"vae"/"model")
    cache = encode_dataset(vae, tiny_dataset, tmp_path/"latents", progress=False)
    C, h = vae.config.latent_channels, 32 // 4
    for name, meanflow in (("flow_model", False), ("meanflow_model", True)):
        torch.manual_seed(0)
        save_model(build_lvfm(cfg["lvfm"], C, h, meanflow=meanflow), tmp_path/"lvfm"/name)
    regressor = EFRegressor(width=4, frames=4, period=1).eval()
    with torch.no_grad(): regressor.head.weight.normal_()
    cfg["lvfm"]["sample_steps"] = 2
    out, tables = lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=5)
    for kind in ("multistep", "onestep"):
        assert np.isfinite(out[f"ef_mae_{kind}"]) and np.isfinite(out[f"ef_r2_{kind}"])
        assert tables[kind].requested_ef.tolist() == pytest.approx([20, 35, 50, 65, 80])
        assert tables[kind].anatomy_ef.notna().all()
    with pytest.raises(ValueError, match="n_videos"): lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=1)
    with pytest.raises(ValueError, match="kinds"): lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, kinds=("fast",))
    # one model at a time, with its guidance scale or MeanFlow steps overridden: the setting reaches every sampling call
    import echoflow.lvfm as lvfm_mod
    seen, generate = [], lvfm_mod.generate
    def spy(model, ef, **kw):
        seen.append((kw.get("cfg_scale"), kw.get("steps"))); return generate(model, ef, **kw)
    monkeypatch.setattr(lvfm_mod, "generate", spy)
    out, tables = lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=3, kinds=("multistep",), cfg_scale=3.0)
    assert seen == [(3.0, 2)] and list(tables) == ["multistep"] and not any("onestep" in k for k in out)
    seen.clear()
    lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=3, kinds=("onestep",), meanflow_steps=2)
    assert seen == [(None, 2)]
    probe_scales = []
    def spy_probe(model, ef, **kw):
        probe_scales.append(kw.get("ef_probe_scale")); return generate(model, ef, **kw)
    monkeypatch.setattr(lvfm_mod, "generate", spy_probe)
    lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=3, kinds=("onestep",), onestep_probe_scale=0.0)
    lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=3, kinds=("onestep",))
    assert probe_scales == [0.0, None]                                                # the override reaches the one-step sampler
    # requests made from each anatomy's own EF, and generation without an anatomy frame
    anatomies = []
    def spy_anatomy(model, ef, **kw):
        anatomies.append(kw.get("anatomy")); return generate(model, ef, **kw)
    monkeypatch.setattr(lvfm_mod, "generate", spy_anatomy)
    out, tables = lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=5, kinds=("onestep",),
                                 requested=lambda a: a - 10 + np.arange(len(a)))      # the tiny set may have one TEST video: vary
    t = tables["onestep"]
    assert t.requested_ef.to_numpy() == pytest.approx(t.anatomy_ef.to_numpy() - 10 + np.arange(5), abs=1e-3)
    assert anatomies[-1] is not None
    lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=3, kinds=("onestep",), anatomy=False)
    assert anatomies[-1] is None
    with pytest.raises(ValueError, match="5 values"):
        lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=5, kinds=("onestep",), requested=lambda a: a[:2])
    with pytest.raises(ValueError, match="requested must be"):
        lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=5, kinds=("onestep",), requested=[30, 40])
    # anatomies from another split (choosing sampler settings off the test set)
    from echoflow.data import LatentVideos
    val = LatentVideos(cache, split="VAL").table.EF.to_numpy(float)
    _, tables = lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=4, kinds=("onestep",), split="VAL")
    assert tables["onestep"].anatomy_ef.to_numpy() == pytest.approx(val[np.arange(4) % len(val)])
    with pytest.raises(ValueError, match="split"):
        lvfm_adherence(regressor, tmp_path/"lvfm", tmp_path/"vae", cache, cfg, n_videos=4, kinds=("onestep",), split="test")


def test_balanced_sampling_draws_rare_ef_more_often(tiny_dataset):
    "ef.balance 1 draws a rare EF about as often as a common one; balance 0 draws it at its share of the videos."
    from echoflow.ef import _as_train_sources, ef_train_loader
    src = _as_train_sources([tiny_dataset])[0]
    n = len(src.table)
    rare = np.zeros(n, bool); rare[: max(1, n // 6)] = True
    src.table = src.table.assign(EF=np.where(rare, 30.0, 60.0))
    e = load_preset("smoke")["ef"] | {"batch_size": 4}
    share = {}
    for balance in (0.0, 1.0):
        torch.manual_seed(0)
        loader = ef_train_loader([src], e | {"balance": balance})
        efs = torch.cat([b["ef"] for _, b in zip(range(40), iter_forever(loader))])
        share[balance] = float((efs < 45).float().mean())
    print(f"rare share {rare.mean():.2f}; drawn: balance 0 {share[0.0]:.2f}, balance 1 {share[1.0]:.2f}")
    assert abs(share[0.0] - rare.mean()) < 0.12, share
    assert abs(share[1.0] - 0.5) < 0.12, share


def iter_forever(loader):
    while True: yield from loader


def test_read_requests_matches_videos_to_their_requests_and_checks_names(tmp_path):
    "Videos named <kind>_<i> come back with their own request and anatomy EF whatever order the reader lists them in."
    from echoflow.ef import read_requests
    base = beating_disk_videos(n_patients=6, videos_per_patient=2)
    req = np.linspace(20, 80, len(base))
    videos = [EchoVideo(name=f"gen_{i}", frames=v.frames, fps=v.fps, ef=float(req[i]), patient_id=f"gen_{i}", split="TEST")
              for i, v in enumerate(base)]
    videos = [videos[i] for i in np.random.default_rng(0).permutation(len(videos))]   # handed over out of order
    anatomy = req + 1000 + np.arange(len(req))                        # each video's anatomy EF tells which video a row is
    regressor = EFRegressor(width=4, frames=8, period=1).eval()
    with torch.no_grad(): regressor.head.weight.normal_()
    out, t = read_requests(regressor, videos, anatomy, "gen", dependence=False)
    assert len(t) == len(videos) and t.requested_ef.tolist() != sorted(t.requested_ef.tolist())   # the rows come in the order handed over
    i = (t.anatomy_ef - t.requested_ef - 1000).round().astype(int)
    assert t.requested_ef.to_numpy() == pytest.approx(req[i]) and sorted(i) == list(range(len(videos)))
    measured = predict_ef(regressor, write_echonet(tmp_path/"gen", videos, tracings=False), clips="all")
    assert t.measured_ef.to_numpy() == pytest.approx(measured.ef_pred.to_numpy(), abs=1e-4)
    assert out["ef_mae_gen"] == pytest.approx(np.abs(t.measured_ef - t.requested_ef).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="gen_0 .. gen_11"): read_requests(regressor, videos[1:] + [videos[1]], anatomy, "gen")   # gen_1 twice, no gen_0
    with pytest.raises(ValueError, match="anatomy_ef: expected 12"): read_requests(regressor, videos, anatomy[:5], "gen")
