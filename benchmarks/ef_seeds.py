"""How much the real-trained EF regressor of a run depends on its seed and its number of training steps.

Trains the preset's regressor (`train_ef_regressor`) on a run's real TRAIN videos once per (steps, seed) and prints
R^2 and MAE on its real TEST videos, with the stage's clip protocol: the figures behind `default`'s `ef.steps`.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ef_seeds.py runs/default [--preset default] [--steps 250,500] [--seeds 0,1,2]
"""
import argparse
import time
from pathlib import Path

import torch

from echoflow.core import load_preset
from echoflow.data import read_echonet
from echoflow.ef import evaluate_ef, train_ef_regressor


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with data/ (the real dataset)")
    ap.add_argument("--preset", default="default"); ap.add_argument("--steps", default="250,500"); ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (args.run/"data"/"FileList.csv").exists(): raise SystemExit(f"{args.run/'data'}: no dataset; run the data stage first")
    torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset)
    real = read_echonet(args.run/"data")
    clips = cfg["ef"]["test_clips"] or "all"
    for steps in (int(s) for s in args.steps.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            t = time.time()
            res = train_ef_regressor([real], cfg, seed=seed, steps=steps)
            m, _ = evaluate_ef(res.ema, real, split="TEST", clips=clips, seed=seed, n_boot=0)
            print(f"steps {steps:5d}  seed {seed}:  R^2 {m['r2']:6.3f}  MAE {m['mae']:5.2f}  ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
