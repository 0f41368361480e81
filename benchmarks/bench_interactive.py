"""Interactive latency: one-step generation + A-VAE decoding of one video, as the EF slider does it.

Target (DESIGN.md, issue 12): a 32-frame 64x64 video in <= 1 s on 2 CPU cores, so the slider feels live.
Weights are untrained (timing does not depend on them); sizes are the preset's. Where the preset steers the one-step
model with the latent EF probe (`lvfm.probe_steps` and `lvfm.meanflow_probe_scale` > 0, e.g. `small`), an untrained
probe is attached the same way, so its forward and backward pass are timed too.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_interactive.py [--preset default] [--frames 32] [--threads 2]
"""
import argparse
import statistics
import time

import torch

from echoflow.core import load_preset
from echoflow.generator import EchoFlowPipeline
from echoflow.lifm import build_lifm
from echoflow.lvfm import LatentEFProbe, attach_ef_probe, build_lvfm, generate
from echoflow.privacy import PrivacyFilter, ReIDEncoder, embed
from echoflow.vae import build_vae, decode_video, latent_shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default"); ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2); ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset, {"lvfm.frames": max(args.frames, load_preset(args.preset)["lvfm"]["frames"])})
    vae = build_vae(cfg).eval()
    shape = latent_shape(vae, cfg["data"]["size"])
    L = cfg["lvfm"]
    lvfm = build_lvfm(L, latent_channels=shape[0], sample_size=shape[1], meanflow=True).eval()
    steered = L["probe_steps"] > 0 and L["meanflow_probe_scale"] > 0
    if steered: attach_ef_probe(lvfm, LatentEFProbe(latent_channels=shape[0], width=L["probe_width"]).eval(), L["meanflow_probe_scale"], L["probe_until"])
    lifm = build_lifm(cfg["lifm"], shape).eval()
    enc = ReIDEncoder(in_channels=shape[0], embed_dim=cfg["reid"]["embed_dim"], members=cfg["reid"]["members"]).eval()
    bank = embed(enc, torch.randn(64, *shape))
    pipe = EchoFlowPipeline(vae, lifm, lvfm, PrivacyFilter(enc, bank, torch.arange(64), [str(i) for i in range(64)], 0.999, shape))
    n_params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in (("vae decoder", vae.decoder), ("lvfm", lvfm), ("lifm", lifm))}
    anatomy = torch.randn(1, *shape)

    def timed(fn):
        fn()  # warm-up
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    with torch.no_grad():
        z = generate(lvfm, 55.0, anatomy=anatomy, num_frames=args.frames, steps=1)
        t_gen = timed(lambda: generate(lvfm, 55.0, anatomy=anatomy, num_frames=args.frames, steps=1))
        t_dec = timed(lambda: decode_video(vae, z, scaling=pipe.scaling))
        t_all = timed(lambda: pipe(ef=55.0, num_frames=args.frames, lifm_steps=cfg["lifm"]["sample_steps"], output_type="np"))
    print(f"preset {args.preset}: {args.frames} frames of {cfg['data']['size']}x{cfg['data']['size']} px, latents {shape}, "
          f"{args.threads} threads; parameters (M): " + ", ".join(f"{k} {v:.2f}" for k, v in n_params.items()))
    print(f"one-step LVFM generation : {t_gen:.3f} s" + (f"   (steered by the EF probe, scale {L['meanflow_probe_scale']:g})" if steered else ""))
    print(f"A-VAE decoding           : {t_dec:.3f} s")
    print(f"generation + decoding    : {t_gen + t_dec:.3f} s   (target <= 1 s)")
    print(f"full pipe() call         : {t_all:.3f} s   (+ LIFM anatomy, {cfg['lifm']['sample_steps']} steps, and the privacy filter)")


if __name__ == "__main__":
    main()
