"""LIFM costs per preset: parameters, seconds per training step (DiT and the size-matched UNet) and sampling time.

Usage: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_lifm.py [--presets smoke default small] [--threads 2]
Prints one row per preset and backbone; timings are medians over a few repeats (fp32, CPU unless ECHOFLOW_DEVICE says otherwise).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from echoflow.core import get_device, load_preset
from echoflow.lifm import build_lifm, count_parameters, sample_anatomies, seconds_per_step

LATENT = {"smoke": (4, 8, 8), "default": (4, 16, 16), "small": (4, 14, 14), "paper": (4, 28, 28)}


def sampling_seconds(model, n: int, steps: int, cfg_scale: float, repeats: int = 2) -> float:
    "Median seconds to sample `n` anatomies with `steps` Euler steps."
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        sample_anatomies(model, n, "A4C", steps=steps, cfg_scale=cfg_scale, generator=torch.Generator().manual_seed(i))
        if i: times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["smoke", "default", "small"], choices=list(LATENT))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--samples", type=int, default=64, help="anatomies per sampling measurement")
    args = parser.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = get_device()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"{'preset':>8} {'backbone':>8} {'latent':>10} {'params':>11} {'batch':>5} {'s/step':>7} "
          f"{'steps':>6} {'train min':>9} {'sample steps':>12} {'ms/anatomy':>10}")
    for preset in args.presets:
        cfg = load_preset(preset)
        L = cfg["lifm"]
        shape = LATENT[preset]
        batch = {"latent": torch.randn(L["batch_size"], *shape, device=device),
                 "view": torch.zeros(L["batch_size"], dtype=torch.long, device=device),
                 "mask": torch.zeros(L["batch_size"], 1, *shape[1:], device=device)}
        for backbone in ("dit", "unet"):
            torch.manual_seed(0)
            model = build_lifm(L, shape, backbone).to(device)
            sps = seconds_per_step(model, batch)
            samp = sampling_seconds(model.eval(), args.samples, L["sample_steps"], L["cfg_scale"])
            print(f"{preset:>8} {backbone:>8} {'x'.join(map(str, shape)):>10} {count_parameters(model):>11,} {L['batch_size']:>5} "
                  f"{sps:7.3f} {L['steps']:>6} {sps * L['steps'] / 60:9.1f} {L['sample_steps']:>12} {1000 * samp / args.samples:10.2f}")


if __name__ == "__main__":
    main()
