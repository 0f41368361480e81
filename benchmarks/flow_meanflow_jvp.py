"""Cost of one MeanFlow training step: torch.func.jvp vs the finite-difference estimate vs plain flow matching.

Each configuration runs in its own process so that the peak resident memory (ru_maxrss) belongs to it alone.
Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/flow_meanflow_jvp.py [--frames 16] [--size 14] [--batch 2]
Prints a table: seconds per step (median of the timed steps) and peak RSS above the process's baseline.
"""
import argparse, json, resource, subprocess, sys, time


def step_cost(mode, frames, size, batch, width, steps):
    import torch
    from torch import nn
    from echoflow.flow.meanflow import meanflow_loss
    from echoflow.flow.paths import LinearPath, flow_matching_loss
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(4 + 2, width, 3, padding=1), nn.SiLU(), nn.Conv3d(width, width, 3, padding=1), nn.SiLU(),
                        nn.Conv3d(width, width, 3, padding=1), nn.SiLU(), nn.Conv3d(width, 4, 3, padding=1))
    def u_fn(z, r, t):
        times = torch.stack([t, r - t], 1)[:, :, None, None, None].expand(-1, -1, *z.shape[2:])
        return net(torch.cat([z, times], 1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    x_1 = torch.randn(batch, 4, frames, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        x_0 = torch.randn_like(x_1)
        start = time.perf_counter()
        if mode == "flow_matching":
            loss = flow_matching_loss(lambda x, t: u_fn(x, t, t), LinearPath().sample(x_0, x_1))
        else:  # every row a MeanFlow row (flow_ratio=0): the worst case for memory
            loss = meanflow_loss(u_fn, x_0, x_1, flow_ratio=0.0, jvp=mode)
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "s_per_step": sorted(times[1:])[len(times[1:]) // 2], "peak_mb_above_base": (peak - base) / 1024}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=16); parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--batch", type=int, default=2); parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4); parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(step_cost(args.child, args.frames, args.size, args.batch, args.width, args.steps)))
        sys.exit(0)
    print(f"latents (B={args.batch}, 4, T={args.frames}, {args.size}x{args.size}), 4-layer Conv3d width {args.width}")
    print(f"{'mode':<20}{'s/step':>10}{'peak MB':>10}")
    for mode in ("flow_matching", "autograd", "finite_difference"):
        out = subprocess.run([sys.executable, __file__, "--child", mode] + [f"--{k}={v}" for k, v in
                             dict(frames=args.frames, size=args.size, batch=args.batch, width=args.width, steps=args.steps).items()],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['mode']:<20}{row['s_per_step']:>10.3f}{row['peak_mb_above_base']:>10.0f}")
