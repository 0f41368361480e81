"""A-VAE: losses and metrics against naive versions, building per preset, training, save/load, decoding, the latent cache."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import load_file

import echoflow.vae as vae_mod
from echoflow.core import load_preset
from echoflow.data import LatentVideos, read_echonet, read_scaling, write_echonet
from echoflow.losses import (AVAELoss, PatchDiscriminator, adaptive_weight, delayed, discriminator_loss, frequency_loss,
                             gaussian_window, hinge_d_loss, hinge_g_loss, kl_divergence, ms_ssim, psnr, ssim)
from echoflow.vae import (FrameBank, build_vae, decode_video, downsampling_factor, encode_dataset, encode_frames,
                          latent_shape, load_latents, reconstruct, reconstruction_metrics, standardise, train_vae,
                          unstandardise, vae_kwargs, video_frames)
from fixtures import toy_videos


# ---------------------------------------------------------------- metrics and losses

def naive_ssim(x, y, size=11, sigma=1.5):
    "Window-by-window SSIM of one (H, W) pair in [-1, 1], in float64, straight from the definition (on [0, 1], R = 1)."
    w1 = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * sigma**2))
    w = (w1[:, None] * w1[None]) / (w1.sum() ** 2)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    x, y, vals = (x.double() + 1) / 2, (y.double() + 1) / 2, []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            a, b = x[i:i + size, j:j + size], y[i:i + size, j:j + size]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cov = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return torch.stack(vals).mean().item()


@pytest.mark.parametrize("shape, size, sigma", [((2, 1, 20, 23), 11, 1.5), ((1, 2, 16, 16), 7, 1.0)])
def test_ssim_matches_naive(shape, size, sigma):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1)
    fast = ssim(x, y, window_size=size, sigma=sigma, reduction="none")
    for b in range(shape[0]):
        naive = np.mean([naive_ssim(x[b, c], y[b, c], size=size, sigma=sigma) for c in range(shape[1])])
        assert fast[b].item() == pytest.approx(naive, abs=2e-5)


def test_ssim_known_values():
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    a, b, c1 = 0.75, 0.375, 0.01 ** 2  # constant frames at -> 0.5 and -0.25 in [-1, 1]
    const = lambda v: torch.full((1, 1, 16, 16), v)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(const(0.5), const(-0.25)).item() == pytest.approx(expected, abs=1e-4)
    assert ssim(const(a), const(b), value_range=(0, 1)).item() == pytest.approx(expected, abs=1e-4)
    # the same frames as uint8 pixels give the same SSIM
    y = (x * 0.8 + 0.1).clamp(-1, 1)
    assert ssim((x + 1) * 127.5, (y + 1) * 127.5, value_range=(0, 255)).item() == pytest.approx(ssim(x, y).item(), abs=1e-5)
    # anti-correlated texture around mid-grey: the structure term is about -1
    z = torch.randn(1, 1, 32, 32) * 0.3
    assert ssim(z, -z).item() < -0.8


def test_ssim_and_psnr_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 15))
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="reduction"):
        psnr(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8), reduction="sum")
    with pytest.raises(ValueError, match="odd"):
        gaussian_window(10)
    with pytest.raises(ValueError, match="value_range"):
        ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), value_range=(1, 1))


def test_psnr_known_values():
    x = torch.zeros(2, 1, 8, 8)
    y = x.clone(); y[0] += 0.1; y[1] += 0.2
    got = psnr(x, y, reduction="none")
    assert got.tolist() == pytest.approx([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)], abs=1e-4)
    # same figure as on uint8 pixels with range 255
    assert psnr((x + 1) * 127.5, (y + 1) * 127.5, value_range=(0, 255)).item() == pytest.approx(got.mean().item(), abs=1e-3)


def test_ms_ssim():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 64, 64, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ms_ssim(x, y, scales=1).item() == pytest.approx(ssim(x, y).item(), abs=1e-6)
    v = ms_ssim(x, y).item()
    assert 0 < v < 1
    with pytest.raises(ValueError, match="need images"):
        ms_ssim(x, y, scales=4)  # 64 px allows 3 scales of an 11-px window


def test_kl_matches_diffusers():
    params = torch.randn(3, 8, 4, 4)
    post = DiagonalGaussianDistribution(params)
    assert kl_divergence(post.mean, post.logvar).item() == pytest.approx(post.kl().mean().item(), rel=1e-5)


def test_gan_pieces():
    assert hinge_d_loss(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])).item() == pytest.approx(0.5)
    assert hinge_g_loss(torch.tensor([0.5, 1.5])).item() == -1.0
    layer = torch.nn.Linear(3, 1)
    out = layer(torch.randn(5, 3))
    assert adaptive_weight(out.pow(2).mean(), 10 * out.pow(2).mean(), layer.weight).item() == pytest.approx(0.1, rel=1e-3)
    assert delayed(0.3, 4, 5) == 0.0 and delayed(0.3, 5, 5) == 0.3
    assert frequency_loss(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 8, 8)).item() == 0.0
    # the spectral L1 of a unit impulse difference: |FFT| = 1/sqrt(N) everywhere (orthonormal), so the mean is 1/8
    d = torch.zeros(1, 1, 8, 8); d[..., 3, 4] = 1.0
    assert frequency_loss(d, torch.zeros_like(d)).item() == pytest.approx(1 / 8, abs=1e-6)


def test_discriminator_save_load(tmp_path):
    d = PatchDiscriminator(base_channels=8, n_layers=2).eval()
    d.save_pretrained(tmp_path)
    e = PatchDiscriminator.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(d(x), e(x))
    with pytest.raises(ValueError, match="n_layers"):
        PatchDiscriminator(n_layers=0)


# ---------------------------------------------------------------- the model

def tiny_cfg(**vae):
    cfg = load_preset("smoke")
    cfg["vae"] |= dict(block_out_channels=[8, 8, 8], steps=3, batch_size=4, disc_start=1, disc_channels=8, disc_layers=2) | vae
    return cfg


@pytest.mark.parametrize("preset, latent", [("smoke", (4, 8, 8)), ("default", (4, 16, 16)), ("small", (4, 14, 14)),
                                            ("paper", (4, 28, 28))])
def test_latent_shapes_per_preset(preset, latent):
    cfg = load_preset(preset)
    kw = vae_kwargs(cfg)
    assert kw["in_channels"] == kw["out_channels"] == 1
    n = len(cfg["vae"]["block_out_channels"])
    f = cfg["data"]["size"] // latent[1]
    assert 2 ** (n - 1) == f
    if preset in ("smoke", "default"):  # small enough to build in a test
        v = build_vae(cfg)
        assert downsampling_factor(v) == f and latent_shape(v) == latent
        z = v.encode(torch.zeros(1, 1, cfg["data"]["size"], cfg["data"]["size"])).latent_dist.mean
        assert tuple(z.shape[1:]) == latent


def test_bad_sizes():
    with pytest.raises(ValueError, match="not divisible"):
        vae_kwargs(load_preset("small"), size=100)
    with pytest.raises(ValueError, match="block_out_channels"):
        vae_kwargs(tiny_cfg(block_out_channels=[]))


def test_tiny_training_and_save_load(tmp_path):
    cfg = tiny_cfg()
    frames = torch.from_numpy(np.stack([v.frames for v in toy_videos(2, height=32, width=32, frames=8)]).reshape(-1, 32, 32))
    res = train_vae(cfg, frames, out_dir=tmp_path, steps=4, progress=False)
    assert res.step == 4 and np.isfinite(res.history[-1]["loss"])
    last = res.history[-1]
    assert {"l1", "perceptual", "kl", "g_loss", "adaptive_weight", "aux_loss", "d_real", "d_fake"} <= set(last)
    assert (tmp_path/"model"/"config.json").exists() and (tmp_path/"aux"/"config.json").exists()
    loaded = AutoencoderKL.from_pretrained(tmp_path/"model").eval()
    x = frames[:5]
    assert torch.equal(reconstruct(loaded, x), reconstruct(res.ema, x))
    m1, m2 = encode_frames(loaded, x), encode_frames(res.ema, x)
    assert torch.equal(m1[0], m2[0]) and torch.equal(m1[1], m2[1])
    with pytest.raises(ValueError, match="built for"):
        train_vae(cfg, frames[:, :16, :16], steps=1, progress=False, vae=build_vae(cfg))


def test_crop_training_resumes_exactly(tmp_path, monkeypatch):
    "Crops, then whole frames with a restarted EMA: a run that crashed on crops resumes to the same weights."
    cfg = tiny_cfg(crop=16, crop_steps=4, steps=6, disc_start=2)
    cfg["train"] |= {"checkpoint_every": 2}
    frames = torch.randint(0, 256, (16, 32, 32), dtype=torch.uint8)
    whole = train_vae(cfg, frames, out_dir=tmp_path/"whole", progress=False)
    real_call = AVAELoss.__call__

    def crash_at_3(self, vae, batch, step):
        assert self.crop == 16
        if step == 3: raise KeyboardInterrupt("simulated crash")
        return real_call(self, vae, batch, step)

    monkeypatch.setattr(AVAELoss, "__call__", crash_at_3)
    with pytest.raises(KeyboardInterrupt): train_vae(cfg, frames, out_dir=tmp_path/"crashed", progress=False)
    monkeypatch.undo()
    again = train_vae(cfg, frames, out_dir=tmp_path/"crashed", progress=False)
    assert again.resumed_from == 2
    for a, b in ((again.model, whole.model), (again.ema, whole.ema), (again.aux, whole.aux)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # whole frames make different weights: the crops are really used
    full = train_vae(tiny_cfg(crop=0, steps=6, disc_start=2), frames, progress=False)
    assert not torch.equal(full.model.decoder.conv_out.weight, whole.model.decoder.conv_out.weight)
    with pytest.raises(ValueError, match="vae.crop=10 must be a multiple of the downsampling factor 4"):
        train_vae(tiny_cfg(crop=10), frames, progress=False)
    with pytest.raises(ValueError, match="vae.crop=40"):
        train_vae(tiny_cfg(crop=40), frames, progress=False)
    with pytest.raises(ValueError, match=r"vae.crop_steps=6 must be in \[0, 6\)"):
        train_vae(tiny_cfg(crop=16, crop_steps=6, steps=6), frames, progress=False)


def test_training_without_discriminator():
    frames = torch.randint(0, 255, (8, 32, 32), dtype=torch.uint8)
    res = train_vae(tiny_cfg(disc_weight=0.0), frames, steps=2, progress=False)
    assert res.aux is None and "g_loss" not in res.history[-1]


def test_reconstruction_metrics_agree_with_functions():
    torch.manual_seed(0)
    v = build_vae(tiny_cfg()).eval()
    frames = torch.randint(0, 256, (6, 32, 32), dtype=torch.uint8)
    m = reconstruction_metrics(v, frames, batch_size=4)
    x = frames.float()[:, None] / 127.5 - 1
    r = reconstruct(v, frames)
    assert m["frames"] == 6
    assert m["psnr"] == pytest.approx(psnr(r, x).item(), abs=1e-4)
    assert m["ssim"] == pytest.approx(ssim(r, x).item(), abs=1e-5)


def test_decode_video_layouts_and_batches():
    torch.manual_seed(0)
    v = build_vae(tiny_cfg()).eval()
    z = torch.randn(2, 4, 5, 8, 8)  # (B, C, T, h, w)
    video = decode_video(v, z, batch_size=3)
    assert video.shape == (2, 1, 5, 32, 32)
    frames = decode_video(v, z[1].permute(1, 0, 2, 3), batch_size=64)  # (T, C, h, w)
    assert frames.shape == (5, 1, 32, 32)
    assert torch.allclose(video[1].permute(1, 0, 2, 3), frames, atol=1e-5)
    assert video.min() >= -1 and video.max() <= 1
    scaling = {"mean": [0.5, -0.5, 0.0, 1.0], "std": [2.0, 1.0, 0.5, 3.0]}
    assert torch.allclose(decode_video(v, standardise(z, scaling), scaling=scaling), video, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        decode_video(v, torch.randn(2, 3, 5, 8, 8))
    with pytest.raises(ValueError, match=r"\(T, C, h, w\)"):
        decode_video(v, torch.randn(4, 8, 8))


def test_channels_last_inference_matches_and_saves(tmp_path, monkeypatch):
    torch.manual_seed(0)
    v = build_vae(tiny_cfg())
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    monkeypatch.setattr(vae_mod, "CHANNELS_LAST", False)
    plain = reconstruct(v, x)
    assert v.decoder.conv_in.weight.is_contiguous()
    monkeypatch.setattr(vae_mod, "CHANNELS_LAST", True)
    fast = reconstruct(v, x)
    assert v.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(plain, fast, atol=1e-4)   # the two layouts round differently: up to 3e-5 on outputs of size 1 (AMD EPYC)
    v.save_pretrained(tmp_path)  # a channels_last model still saves and reloads to the same outputs
    assert torch.allclose(reconstruct(AutoencoderKL.from_pretrained(tmp_path), x), fast, atol=1e-5)


def test_standardise_roundtrip_and_bad_scaling():
    z = torch.randn(3, 4, 6, 5, 5)
    s = {"mean": torch.randn(4).tolist(), "std": (torch.rand(4) + 0.5).tolist()}
    zs = standardise(z, s)
    assert torch.allclose(zs[:, 2].mean() * s["std"][2] + s["mean"][2], z[:, 2].mean(), atol=1e-5)
    assert torch.allclose(unstandardise(zs, (torch.tensor(s["mean"]), torch.tensor(s["std"]))), z, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        standardise(z, {"mean": [0] * 4, "std": [1, 1, 0, 1]})
    with pytest.raises(ValueError, match="channels in dim 1"):
        standardise(torch.randn(2, 3, 4, 4), s)


# ---------------------------------------------------------------- the latent cache

@pytest.fixture
def dataset(tmp_path):
    videos = toy_videos(4, frames=6, height=48, width=48)  # TRAIN, TRAIN, VAL, TEST; resized to 32 px on the way
    return write_echonet(tmp_path/"data", videos), videos


def test_encode_dataset(tmp_path, dataset):
    root, videos = dataset
    torch.manual_seed(0)
    v = build_vae(tiny_cfg()).eval()
    cache = encode_dataset(v, root, tmp_path/"cache", batch_size=4, logvar=True, progress=False)
    table = pd.read_csv(cache/"FileList.csv")
    assert sorted(table.FileName) == sorted(x.name for x in videos)
    assert "path" not in table
    z = {x.name: load_file(str(cache/"latents"/f"{x.name}.safetensors")) for x in videos}
    assert all(t["mean"].shape == (6, 4, 8, 8) and t["mean"].dtype == torch.float32 and "logvar" in t for t in z.values())
    train = torch.cat([z[x.name]["mean"] for x in videos if x.split == "TRAIN"])
    mean, std = read_scaling(cache)
    assert torch.allclose(mean, train.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(std, train.std((0, 2, 3)), atol=1e-5)
    everything = torch.cat([t["mean"] for t in z.values()])
    assert not torch.allclose(mean, everything.mean((0, 2, 3)), atol=1e-5)  # TEST/VAL videos do not count
    # the latents are those of the frames, resized to the VAE's size
    source = read_echonet(root, require_ef=False)
    frames, _ = video_frames([source[videos[0].name]], size=32)  # decoded from the AVI, as the cache was
    assert torch.allclose(z[videos[0].name]["mean"], encode_frames(v, frames)[0], atol=1e-5)
    assert torch.allclose(load_latents(cache, videos[0].name, standardised=True),
                          standardise(z[videos[0].name]["mean"], (mean, std)))
    # the data helper's latent dataset reads the cache
    ds = LatentVideos(cache, split="TRAIN", max_frames=8)
    item = ds[0]
    assert item["latents"].shape == (4, 8, 8, 8) and int(item["n_frames"]) == 6


def test_failed_encoding_keeps_the_previous_cache(tmp_path, dataset, monkeypatch):
    root, videos = dataset
    v = build_vae(tiny_cfg()).eval()
    cache = encode_dataset(v, root, tmp_path/"cache", progress=False)
    before = {p.name: p.read_bytes() for p in (cache/"latents").iterdir()}
    scaling = (cache/"scaling.json").read_text()
    real, calls = vae_mod.encode_frames, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3: raise RuntimeError("out of memory (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(vae_mod, "encode_frames", flaky)
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match="simulated"):
        encode_dataset(build_vae(tiny_cfg(), seed=5), root, cache, progress=False)
    assert {p.name: p.read_bytes() for p in (cache/"latents").iterdir()} == before
    assert (cache/"scaling.json").read_text() == scaling
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_encode_dataset_bad_input(tmp_path, dataset):
    root, videos = dataset
    v = build_vae(tiny_cfg()).eval()
    with pytest.raises(FileNotFoundError):
        encode_dataset(v, tmp_path/"missing", tmp_path/"cache", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        encode_dataset(v, root, tmp_path/"cache", batch_size=0, progress=False)
    no_train = write_echonet(tmp_path/"test_only", [x for x in videos if x.split == "TEST"])
    with pytest.raises(ValueError, match="no TRAIN videos"):
        encode_dataset(v, no_train, tmp_path/"cache2", progress=False)


def test_video_frames_and_bank(dataset):
    root, videos = dataset
    frames, patients = video_frames(root, split="TRAIN", every=2)
    assert frames.dtype == torch.uint8 and frames.shape == (6, 48, 48)
    assert patients == [videos[0].patient_id] * 3 + [videos[1].patient_id] * 3
    sub, _ = video_frames(videos, split=["VAL", "TEST"], size=32, max_frames=5)
    assert sub.shape == (5, 32, 32)
    x = FrameBank(frames)[0]
    assert x.shape == (1, 48, 48) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="no videos"):
        video_frames(videos, split="EXTRA")
    with pytest.raises(ValueError, match="uint8"):
        FrameBank(frames.float())
