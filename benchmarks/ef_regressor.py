"""Seconds per training step and per test clip of the EF regressor at each preset's size (prints figures; not a test).

    OMP_NUM_THREADS=2 python benchmarks/ef_regressor.py [preset ...]
"""
import sys
import time

import torch
import torch.nn.functional as F

from echoflow.core import load_preset
from echoflow.ef import EFRegressor


def bench(preset: str, repeats: int = 3) -> dict:
    cfg = load_preset(preset)
    e = cfg["ef"]
    size = e["size"] or cfg["data"]["size"]
    model = EFRegressor(width=e["width"], frames=e["frames"], period=e["period"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(e["batch_size"], 1, e["frames"], size, size), torch.rand(e["batch_size"])
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        loss = F.mse_loss(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        if i: times.append(time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        model(x[:1]); t = time.perf_counter(); model(x); infer = (time.perf_counter() - t) / len(x)
    step = sorted(times)[len(times) // 2]
    return {"preset": preset, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "clip": f"{e['frames']}x{size}x{size}",
            "batch": e["batch_size"], "s_per_step": step, "steps": e["steps"], "train_min": step * e["steps"] / 60, "s_per_test_clip": infer}


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for p in sys.argv[1:] or ["smoke", "default", "small"]:
        r = bench(p)
        print(f"{r['preset']:>8}: {r['params_M']:.2f}M params, clips {r['clip']}, batch {r['batch']}: {r['s_per_step']:.3f} s/step "
              f"-> {r['steps']} steps = {r['train_min']:.1f} min per regressor (x3 in the ef stage); {r['s_per_test_clip'] * 1000:.0f} ms per test clip")
