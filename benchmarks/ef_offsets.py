"""Where each EF regressor of a finished run goes wrong on the real test videos, and how synthetic and real clips move.

Reads the `ef` stage's per-video predictions (`ef/predictions_<trained on>.csv`) and prints, per training set, R^2
and MAE with the bias (mean predicted - reference), the slope of predicted on reference and the squared correlation:
a regressor can rank patients well (high correlation) and still miss by an offset. Then the re-labels of the
synthetic set against the requested EF (`ef/synthetic_relabels.csv`, when the stage re-labelled), and
`temporal_roughness` of the first clip of every real and synthetic video under the preset's `ef` clip protocol, with
how strongly a clip's frame-to-frame change follows its EF (about a minute at `small`).

    .venv/bin/python benchmarks/ef_offsets.py runs/small3 [--preset small]
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from echoflow.core import load_preset
from echoflow.data import read_echonet
from echoflow.ef import first_clips, temporal_roughness
from echoflow.metrics import ef_adherence


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with data/, synth/ and ef/ stage outputs")
    ap.add_argument("--preset", default="small")
    args = ap.parse_args()
    ef_dir = args.run/"ef"
    files = sorted(ef_dir.glob("predictions_*.csv"))
    if not files: raise SystemExit(f"{ef_dir}: no predictions_*.csv; run the pipeline's ef stage first")
    print(f"{'trained on':>11} {'n':>4} {'R^2':>6} {'MAE':>6} {'bias':>6} {'slope':>6} {'corr^2':>7}")
    for f in files:
        p = pd.read_csv(f)
        a = ef_adherence(p.ef, p.ef_pred)   # reference EF in the "requested" seat: bias = mean(predicted - reference)
        print(f"{f.stem.removeprefix('predictions_'):>11} {a['n']:4d} {a['r2']:6.2f} {a['mae']:6.2f} {a['bias']:6.2f} {a['slope']:6.2f} "
              f"{a['pearson_r'] ** 2:7.2f}")
    if (ef_dir/"synthetic_relabels.csv").exists():
        r = pd.read_csv(ef_dir/"synthetic_relabels.csv")
        print(f"re-labels vs requested EF: mean |difference| {np.abs(r.EF - r.EF_requested).mean():.2f}, "
              f"correlation {np.corrcoef(r.EF, r.EF_requested)[0, 1]:.2f}, mean {r.EF.mean():.1f} vs {r.EF_requested.mean():.1f}")
    e = load_preset(args.preset)["ef"]
    for name in ("data", "synth"):
        clips, _, ef = first_clips(read_echonet(args.run/name), e)
        t = temporal_roughness(clips, ef)
        print(f"temporal roughness, {name:>5} ({len(clips)} videos): |first difference| {t['diff']:.4f}, "
              f"|second difference| {t['diff2']:.4f}, ratio {t['ratio']:.2f}, correlation of a clip's change with its EF {t['ef_corr']:.2f}")


if __name__ == "__main__":
    main()
