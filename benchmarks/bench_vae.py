"""A-VAE speed on this machine: training steps/s, frames encoded/s and the decoding time of a 32-frame 64 px video,
at the default (64 px, f4) and small (112 px, f8) presets, with and without channels_last (and, where the preset trains
on random crops, `vae.crop`, the step on crops beside the step on whole frames).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_vae.py [--threads 2] [--repeats 5] [--sizes default small]

Prints one table; the interactive budget (LVFM issue) is one-step generation + decoding of a 32-frame 64x64 video in
<= 1 s on 2 cores, and the LVFM's one-step sampling takes about 0.18 s of it (DESIGN.md), so decoding must fit ~0.8 s.
Each figure is the fastest of `--repeats` runs after a warm-up, the two memory layouts measured alternately, so that
other processes on the machine (the load average is printed) disturb both alike; the minimum is the least disturbed."""
import argparse
import os
import time

import torch

from echoflow.core import load_preset
from echoflow.losses import AVAELoss, PatchDiscriminator, discriminator_loss
import echoflow.vae as vae_mod
from echoflow.vae import build_vae, decode_video, encode_frames, loss_settings


def once(fn) -> float:
    t = time.perf_counter(); fn(); return time.perf_counter() - t


def alternate(make, repeats: int) -> dict:
    "Fastest time of fn() for each layout, layouts measured in turns; `make(channels_last)` returns fn."
    fns = {cl: make(cl) for cl in (False, True)}
    for fn in fns.values(): fn()  # warm-up
    times = {cl: [] for cl in fns}
    for _ in range(repeats):
        for cl, fn in fns.items(): times[cl].append(once(fn))
    return {cl: min(t) for cl, t in times.items()}


def as_layout(module_or_tensor, channels_last: bool):
    return module_or_tensor.to(memory_format=torch.channels_last) if channels_last else module_or_tensor


def train_step(cfg, channels_last: bool, crop: int | None = None):
    "One A-VAE training step (forward + backward of the VAE with the GAN term, then the discriminator step), on crops if `crop`."
    v, size = cfg["vae"], cfg["data"]["size"]
    vae = as_layout(build_vae(cfg).train(), channels_last)
    disc = as_layout(PatchDiscriminator(base_channels=v["disc_channels"], n_layers=v["disc_layers"]).train(), channels_last)
    loss_fn = AVAELoss(disc, **(loss_settings(v) | dict(disc_start=0, crop=crop)))  # the GAN term on from the first step
    opt, dopt = torch.optim.AdamW(vae.parameters(), 1e-4), torch.optim.AdamW(disc.parameters(), 1e-4)
    x = as_layout(torch.rand(v["batch_size"], 1, size, size) * 2 - 1, channels_last)

    def step():
        disc.requires_grad_(False)
        loss, _, out = loss_fn(vae, x, 1)
        opt.zero_grad(); loss.backward(); opt.step()
        disc.requires_grad_(True)
        d_loss, _ = discriminator_loss(disc, out["real"], 1, out)
        dopt.zero_grad(); d_loss.backward(); dopt.step()
    return step


def encode_job(cfg, channels_last: bool, n: int = 64):
    "Encoding `n` frames (posterior mean), batches of the preset's latents.batch_size."
    size = cfg["data"]["size"]
    vae = build_vae(cfg).eval()
    frames = torch.randint(0, 256, (n, size, size), dtype=torch.uint8)

    def run():
        vae_mod.CHANNELS_LAST = channels_last  # the layout encode_frames / decode_video use
        encode_frames(vae, frames, cfg["latents"]["batch_size"])
    return run


def decode_job(cfg, channels_last: bool, frames: int = 32, batch_size: int = 32):
    "Decoding one video of `frames` latent frames, 64 px frames at the default preset."
    vae = build_vae(cfg).eval()
    c, h, w = vae.config.latent_channels, *(cfg["data"]["size"] // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1),) * 2
    z = torch.randn(1, c, frames, h, w)

    def run():
        vae_mod.CHANNELS_LAST = channels_last
        decode_video(vae, z, batch_size=batch_size)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", nargs="+", default=["default", "small"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for preset in args.sizes:
        cfg = load_preset(preset)
        steps = alternate(lambda cl: train_step(cfg, cl), max(2, args.repeats // 2))
        encs = alternate(lambda cl: encode_job(cfg, cl), args.repeats)
        decs = alternate(lambda cl: decode_job(cfg, cl), args.repeats)
        for cl in (False, True):
            layout = "channels_last" if cl else "contiguous"
            step, enc, dec = steps[cl], 64 / encs[cl], decs[cl]
            rows.append((preset, cfg["data"]["size"], layout, 1 / step, step, enc, dec))
            print(f"{preset:8s} {cfg['data']['size']:4d}px {layout:14s} train {1 / step:6.2f} steps/s ({step:5.2f} s/step, "
                  f"batch {cfg['vae']['batch_size']})  encode {enc:7.1f} frames/s  decode 32 frames {dec:5.2f} s", flush=True)
        crop = cfg["vae"]["crop"]
        if crop:  # the preset trains on crops: time its step too, in both layouts
            cropped = alternate(lambda cl: train_step(cfg, cl, crop), max(2, args.repeats // 2))
            for cl in (False, True):
                print(f"{preset:8s} {crop:4d}px crops of {cfg['data']['size']} px, {'channels_last' if cl else 'contiguous':14s} "
                      f"train {1 / cropped[cl]:6.2f} steps/s ({cropped[cl]:5.2f} s/step; whole frames {steps[cl]:5.2f} s/step, "
                      f"{steps[cl] / cropped[cl]:.1f}x)", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    for preset in args.sizes:
        mine = [r for r in rows if r[0] == preset]
        best_train = max(mine, key=lambda r: r[3])[2]
        best_dec = min(mine, key=lambda r: r[6])[2]
        print(f"{preset}: faster for training: {best_train}; faster for decoding: {best_dec}")
    default = [r for r in rows if r[0] == "default"]
    if default:
        best = min(r[6] for r in default)
        print(f"decoding a 32-frame 64 px video: {best:.2f} s (budget for decoding: about 0.8 s of the 1 s interactive target)")


if __name__ == "__main__":
    main()
