"""How much a run's real-trained EF regressor, and every EF figure read with it, depends on its seed, steps and balancing.

Trains the preset's regressor (`train_ef_regressor`) on a run's real TRAIN videos once per (balance, steps, seed) and
prints R^2 and MAE on its real TEST videos, with the stage's clip protocol: the figures behind `default`'s `ef.steps`
and `ef.balance`. With `--ceiling` each regressor also reads, on the `lvfm_adherence` protocol (EF 20..80 on TEST
anatomies), the phantom's own videos at the requested EF (`adherence_ceiling`: what a perfect generator scores); with
`--adherence` also the run's two video models' videos (the same videos for every regressor): how much of an adherence
figure is the instrument's.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ef_seeds.py runs/default [--preset default] [--steps 500] [--seeds 0,1,2]
        [--balance 0,1] [--ceiling] [--adherence] [--videos 24]
"""
import argparse
import time
from pathlib import Path

import torch

from echoflow.core import load_preset
from echoflow.data import read_echonet
from echoflow.ef import adherence_ceiling, evaluate_ef, lvfm_adherence, train_ef_regressor


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with data/ (the real dataset); with --adherence also vae/, latents/, lvfm/")
    ap.add_argument("--preset", default="default"); ap.add_argument("--steps", default=None, help="comma-separated (default: the preset's)")
    ap.add_argument("--seeds", default="0,1,2"); ap.add_argument("--balance", default=None, help="comma-separated ef.balance values (default: the preset's)")
    ap.add_argument("--ceiling", action="store_true", help="also read the phantom's own videos at the requested EF with each regressor")
    ap.add_argument("--adherence", action="store_true", help="also read the ceiling and the run's generated videos with each regressor")
    ap.add_argument("--videos", type=int, default=None, help="videos per adherence row (default: the preset's lvfm.eval_videos)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    need = ("data/FileList.csv",) + (("vae", "latents", "lvfm") if args.adherence else ())
    for d in need:
        if not (args.run/d).exists(): raise SystemExit(f"{args.run/d}: missing; run the pipeline's stages first")
    torch.set_num_threads(args.threads)
    base = load_preset(args.preset)
    real = read_echonet(args.run/"data")
    clips = base["ef"]["test_clips"] or "all"
    balances = [float(b) for b in args.balance.split(",")] if args.balance else [float(base["ef"].get("balance") or 0.0)]
    steps_list = [int(s) for s in args.steps.split(",")] if args.steps else [base["ef"]["steps"]]
    for balance in balances:
        cfg = load_preset(args.preset, {"ef.balance": balance})
        for steps in steps_list:
            for seed in (int(s) for s in args.seeds.split(",")):
                t = time.time()
                reg = train_ef_regressor([real], cfg, seed=seed, steps=steps).ema.eval()
                m, _ = evaluate_ef(reg, real, split="TEST", clips=clips, seed=seed, n_boot=0)
                line = f"balance {balance:g}  steps {steps:5d}  seed {seed}:  R^2 {m['r2']:6.3f}  MAE {m['mae']:5.2f}"
                rows = []
                if args.ceiling or args.adherence:
                    anatomies = args.run/"latents" if (args.run/"latents").exists() else args.run/"data"
                    rows.append(("ceiling", adherence_ceiling(reg, anatomies, cfg, n_videos=args.videos)[0], "ceiling"))
                if args.adherence:
                    a, _ = lvfm_adherence(reg, args.run/"lvfm", args.run/"vae", args.run/"latents", cfg, n_videos=args.videos)
                    rows += [("multi-step", a, "multistep"), ("one-step", a, "onestep")]
                line += "".join(f"  | {name} MAE {d[f'ef_mae_{k}']:5.2f} R^2 {d[f'ef_r2_{k}']:5.2f} slope {d[f'ef_slope_{k}']:4.2f} bias {d[f'ef_bias_{k}']:+5.1f}"
                                for name, d, k in rows)
                print(line + f"  ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
