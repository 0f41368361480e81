"""EF regressors trained on a run's real and synthetic videos with their clips smoothed in time (`ef.temporal_sigma`).

The synthetic-only regressor reads real videos low and compressed, and the generator's videos flicker, more at high
EF (`50_ef`, "Why the synthetic-only regressor reads real videos low"): if the regressor learnt that flicker as
contraction, smoothing would help it. `EFRegressor(temporal_sigma=s)` smooths every clip in time by a Gaussian of s
frames before the network. For each sigma this trains the preset's regressor (its steps, balance, seed) on each
training set and reads the real TEST videos: R^2 with its interval, MAE, the slope of predicted on reference, the mean
bias and the squared correlation; synthetic-trained models also read the synthetic TEST videos. Measured on a `small`
run (2026-12-07, `50_ef`): sigma 1 leaves the real-trained regressor about as good and makes the synthetic-only one far
worse, so the presets keep 0. Each model took 1278 to 1424 s at `small` on one core with two running side by side;
run two at once with `--threads 1` in two processes.

    .venv/bin/python benchmarks/ef_smoothing.py runs/small --sigmas 0,1 --train real,synthetic [--threads 1] [--out DIR]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from echoflow.core import load_preset
from echoflow.data import read_echonet
from echoflow.ef import evaluate_ef, train_ef_regressor
from echoflow.metrics import ef_adherence
from echoflow.train import set_threads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with data/ and (for synthetic or mixed) synth/")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--sigmas", default="0,1", help="temporal_sigma values (frames), comma-separated")
    ap.add_argument("--train", default="real,synthetic", help="training sets: real, synthetic, mixed (comma-separated)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="save each model and its TEST predictions here")
    args = ap.parse_args()
    names = args.train.split(",")
    bad = [n for n in names if n not in ("real", "synthetic", "mixed")]
    if bad: raise SystemExit(f"--train: unknown training set(s) {bad}; choose from real, synthetic, mixed")
    real = read_echonet(args.run/"data")
    synth = read_echonet(args.run/"synth") if set(names) - {"real"} else None
    rows = {}
    for sigma in (float(s) for s in args.sigmas.split(",")):
        cfg = load_preset(args.preset, {"ef.temporal_sigma": sigma} | ({"train.threads": args.threads} if args.threads else {}))
        set_threads(cfg)
        clips = cfg["ef"]["test_clips"] or "all"
        for name in names:
            t = time.time()
            res = train_ef_regressor({"real": [real], "synthetic": [synth], "mixed": [real, synth]}[name], cfg, seed=args.seed)
            m, pred = evaluate_ef(res.ema, real, split="TEST", clips=clips, seed=args.seed)
            a = ef_adherence(pred.ef, pred.ef_pred)   # reference EF in the "requested" seat: bias = mean(predicted - reference)
            row = {"r2": m["r2"], "r2_lo": m["r2_lo"], "r2_hi": m["r2_hi"], "mae": m["mae"], "slope": a["slope"], "bias": a["bias"],
                   "corr2": a["pearson_r"] ** 2, "seconds": time.time() - t}
            if name != "real":
                ms, _ = evaluate_ef(res.ema, synth, split="TEST", clips=clips, seed=args.seed)
                row |= {"synth_test_r2": ms["r2"], "synth_test_mae": ms["mae"]}
            if args.out is not None:
                res.ema.save_pretrained(args.out/f"{name}_sigma{sigma:g}")
                pred.to_csv(args.out/f"predictions_{name}_sigma{sigma:g}.csv", index=False)
            rows[f"{name} sigma {sigma:g}"] = row
            print(f"{name:>9} sigma {sigma:g}: real TEST R^2 {row['r2']:.3f} [{row['r2_lo']:.2f}, {row['r2_hi']:.2f}] MAE {row['mae']:.2f} "
                  f"slope {row['slope']:.2f} bias {row['bias']:+.2f} corr^2 {row['corr2']:.3f}"
                  + (f"; synthetic TEST R^2 {row['synth_test_r2']:.3f} MAE {row['synth_test_mae']:.2f}" if name != "real" else "")
                  + f" ({row['seconds']:.0f} s)", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out/"smoothing.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
