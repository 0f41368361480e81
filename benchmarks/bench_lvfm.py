"""LVFM speed and memory on this CPU.

1. One-step (MeanFlow) vs multi-step (flow matching, midpoint solver) latent generation at batch 8, side by side
   (target: one step >= 30x less wall time).
2. Interactive use: one-step generation + A-VAE decoding of one 32-frame 64 px video (target: <= 1 s on 2 cores).
3. MeanFlow training cost: step time and peak memory of plain flow matching, MeanFlow with the torch.func.jvp path
   (all rows, and mixed with `flow_ratio` plain rows) and MeanFlow with the JVP-free finite-difference estimate.

Weights are random (timings do not depend on them). Run: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_lvfm.py`
(`--threads`, `--vae-dir runs/default/vae` to time the trained decoder, `--quick` for a fast pass, `--skip-memory`).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from echoflow.core import load_preset
from echoflow.lvfm import LVFMObjective, build_lvfm, generate, nfe


def perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters(): p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model.eval()


def lvfm_pair(preset, frames=None, latent=None):
    cfg = load_preset(preset)
    L = dict(cfg["lvfm"], frames=frames or cfg["lvfm"]["frames"])
    size = latent or cfg["data"]["size"] // (2 ** (len(cfg["vae"]["block_out_channels"]) - 1))
    C = cfg["vae"]["latent_channels"]
    torch.manual_seed(0)
    return L, C, size, perturbed(build_lvfm(L, C, size)), perturbed(build_lvfm(L, C, size, meanflow=True))


def clocks(fn, repeats, warmup=True):
    "Median (wall, cpu) seconds of `fn()` (after a warm-up call); cpu is this process's time summed over threads."
    if warmup: fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time(); fn()
        wall.append(time.perf_counter() - w0); cpu.append(time.process_time() - c0)
    med = lambda v: sorted(v)[len(v) // 2]
    return med(wall), med(cpu)


def speedup(preset, repeats):
    L, C, size, fm, mf = lvfm_pair(preset)
    kw = dict(steps=L["sample_steps"], method=L["sample_method"])
    g = torch.Generator().manual_seed(0)
    anatomy, ef = torch.randn(8, C, size, size, generator=g), torch.linspace(20, 80, 8)
    generate(fm, ef, anatomy=anatomy, steps=1)              # warm-up
    multi = clocks(lambda: generate(fm, ef, anatomy=anatomy, generator=g, **kw),
                   max(1, repeats - 2) if preset == "small" else repeats, warmup=False)
    one = clocks(lambda: generate(mf, ef, anatomy=anatomy, generator=g), 3 * repeats)
    out = {"preset": preset, "params_m": sum(p.numel() for p in mf.parameters()) / 1e6, "multistep_nfe": nfe(fm, **kw)}
    for k, clock in enumerate(("wall", "cpu")):
        out |= {f"multistep_{clock}_s": multi[k], f"onestep_{clock}_s": one[k], f"speedup_{clock}": multi[k] / one[k]}
        print(f"  {preset:8s} {out['params_m']:5.2f}M  {L['frames']:3d} x {C}x{size}x{size}  {clock:4s}: multi-step {multi[k]:7.3f} s "
              f"({out['multistep_nfe']} calls)  one step {one[k]:6.3f} s ({one[k] / 8:.4f} s/video)  speed-up {multi[k] / one[k]:5.1f}x  (target >= 30x)",
              flush=True)
    return out


def interactive(vae_dir, repeats):
    from echoflow.vae import build_vae, decode_video
    cfg = load_preset("default")
    if vae_dir:
        from diffusers import AutoencoderKL
        from echoflow.core import load_model
        vae, which = load_model(AutoencoderKL, os.path.join(vae_dir, "model")), f"trained A-VAE from {vae_dir}"
    else:
        torch.manual_seed(0)
        vae, which = build_vae(cfg, size=64), "default-preset A-VAE architecture, random weights"
    vae.eval()
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    L, C, size, _, mf = lvfm_pair("default", frames=32, latent=64 // f)
    anatomy = torch.randn(1, C, size, size)
    gen = clocks(lambda: generate(mf, [55.0], anatomy=anatomy, num_frames=32), 3 * repeats)
    z = generate(mf, [55.0], anatomy=anatomy, num_frames=32)
    dec = clocks(lambda: decode_video(vae, z), 3 * repeats)
    total = clocks(lambda: decode_video(vae, generate(mf, [55.0], anatomy=anatomy, num_frames=32)), 3 * repeats)
    out = {"decoder": which}
    for k, clock in enumerate(("wall", "cpu")):
        print(f"  {clock:4s}: one-step generation {gen[k]:.3f} s + decoding {dec[k]:.3f} s; together {total[k]:.3f} s "
              f"for 32 x {vae.config.sample_size}x{vae.config.sample_size} (target <= 1 s wall on 2 cores)", flush=True)
        out |= {f"generate_{clock}_s": gen[k], f"decode_{clock}_s": dec[k], f"total_{clock}_s": total[k]}
    print(f"  decoder: {which}; cpu time is summed over threads")
    return out


def _train_cost(args):
    "Run in a fresh process: time and peak memory of a few training steps."
    preset, kind, jvp, ratio, batch, steps = args
    L, C, size, fm, mf = lvfm_pair(preset)
    model = (mf if kind == "meanflow" else fm).train()
    obj = LVFMObjective(kind, flow_ratio=ratio, jvp=jvp)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    b = {"latents": torch.randn(batch, C, L["frames"], size, size), "pad_mask": torch.zeros(batch, L["frames"], dtype=torch.bool),
         "ef": torch.linspace(20, 80, batch)}
    def step():
        loss, _ = obj(model, b); opt.zero_grad(); loss.backward(); opt.step()
    wall, cpu = clocks(step, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # kB -> GB
    print(json.dumps({"s_per_step": wall, "cpu_s_per_step": cpu, "peak_gb": peak}))


def train_costs(preset, batch, steps):
    rows = [("flow matching", "flow", "autograd", 1.0), ("MeanFlow, JVP on every row", "meanflow", "autograd", 0.0),
            ("MeanFlow, JVP, flow_ratio 0.75", "meanflow", "autograd", 0.75),
            ("MeanFlow, finite difference (no JVP)", "meanflow", "finite_difference", 0.0),
            ("MeanFlow, finite difference, ratio 0.75", "meanflow", "finite_difference", 0.75)]
    L = load_preset(preset)["lvfm"]
    print(f"  {preset}: {L['frames']} frames, batch {batch}, {steps} timed steps each, one fresh process per row")
    out = []
    for name, kind, jvp, ratio in rows:
        code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import bench_lvfm as b; b._train_cost({(preset, kind, jvp, ratio, batch, steps)!r})"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
        if res.returncode: print(f"    {name}: failed\n{res.stderr[-800:]}"); continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"    {name:42s} wall {r['s_per_step']:7.3f} s/step  cpu {r['cpu_s_per_step']:7.3f} s/step  peak RSS {r['peak_gb']:5.2f} GB", flush=True)
        out.append({"row": name, **r})
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-dir", default=None, help="a vae stage folder (model/) to time the trained decoder")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smoke and default presets only")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    repeats = 1 if a.quick else 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print("1. latent generation at batch 8: flow matching (multi-step) vs MeanFlow (one step)")
    res = {"speedup": [speedup(p, repeats) for p in (("smoke", "default") if a.quick else ("smoke", "default", "small"))]}
    print("2. interactive: one-step generation + decoding of a 32-frame 64 px video")
    res["interactive"] = interactive(a.vae_dir, repeats)
    if not a.skip_memory:
        print("3. training step cost (peak RSS of the whole process, torch included)")
        res["training"] = {"default": train_costs("default", 8, 1 if a.quick else 2)}
        if not a.quick: res["training"]["small"] = train_costs("small", 4, 2)
    if a.json:
        with open(a.json, "w") as f: json.dump(res, f, indent=1)
