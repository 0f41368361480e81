"""EF adherence of a finished run's multi-step LVFM against the sampling guidance scale, read by its real-trained regressor.

Where `ef_guidance.py` trains a model on stand-in latents, this one measures the model a pipeline run trained: it
animates the first frame of TEST clips at EF asked on an even grid over 20-80% with each guidance scale, decodes
with the run's A-VAE and reads the EF with the run's EF regressor trained on real videos (`ef/regressor_real`).
Prints MAE, R^2, slope and bias per scale (the table in `31_lvfm`; 2.4-5.1 min per scale at `small` on one thread, by the load),
then the same for the MeanFlow model sampled with each number of `--meanflow-steps` (0.5-1.5 min each) and, one
step, steered by its EF probe at each of `--probe-scales` (the table of `31_lvfm` that chose `lvfm.meanflow_probe_scale`). With
`--guidance-ef train` every row guides away from the TRAIN videos' mean EF instead of the null EF (`generate`'s `guidance_ef`;
default: the reference EF the model was configured with, `lvfm.guidance_ef`; `none`: the null EF whatever the model's; a
number: that EF). `--split VAL` animates VAL anatomies instead of TEST ones, to choose a setting off the test set.
`--fit-ef-map` prints, under each row, the EF calibration `fit_ef_map` makes of its readings (for a one-step row, the
value of `lvfm.meanflow_ef_map`; fit on VAL, with the models' own maps off); `--ef-map a,b` samples every row with that
calibration instead of the model's own (`none`: without one).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/guidance_sweep.py runs/small [--preset small] [--scales 4,8,14,20] [--meanflow-steps 1,2,4] [--probe-scales 0,5] [--guidance-ef train|none|EF] [--split VAL] [--fit-ef-map] [--ef-map a,b|none]
"""
import argparse
import time
from pathlib import Path

import torch

from echoflow.core import load_model, load_preset
from echoflow.data import LatentVideos
from echoflow.ef import EFRegressor, lvfm_adherence
from echoflow.lvfm import fit_ef_map


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with vae/, latents/, lvfm/ and ef/ stage outputs")
    ap.add_argument("--preset", default="small"); ap.add_argument("--scales", default="4,8,14,20")
    ap.add_argument("--meanflow-steps", default="1,2,4", help="MeanFlow sampling steps to measure ('' for none)")
    ap.add_argument("--probe-scales", default="", help="one-step model: EF-probe steering strengths to measure (`lvfm.meanflow_probe_scale`; '' for none)")
    ap.add_argument("--videos", type=int, default=None, help="videos per scale (default: the preset's lvfm.eval_videos)")
    ap.add_argument("--threads", type=int, default=1); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance-ef", default=None, help="guide away from this EF instead of the null EF ('train': the mean EF "
                    "of the latent cache's TRAIN videos; 'none': the null EF; default: the model's own)")
    ap.add_argument("--split", default="TEST", choices=("VAL", "TEST"), help="the latent cache's split the anatomies come from")
    ap.add_argument("--ef-map", default=None, help="the EF calibration 'a,b' to sample with ('none': without; default: each model's own)")
    ap.add_argument("--fit-ef-map", action="store_true", help="print the EF calibration fitted to each row's readings")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for d in ("vae", "latents", "lvfm", "ef/regressor_real/model"):
        if not (args.run/d).exists(): raise SystemExit(f"{args.run/d}: missing; run the pipeline up to the ef stage first")
    cfg = load_preset(args.preset)
    regressor = load_model(EFRegressor, args.run/"ef"/"regressor_real"/"model").eval()
    ref = args.guidance_ef
    if ref == "train": ref = float(LatentVideos(args.run/"latents", split="TRAIN").table.EF.mean())
    elif ref == "none": ref = False
    elif ref is not None: ref = float(ref)
    if ref is not None and ref is not False: print(f"guided away from EF {ref:.2f} instead of the null EF")
    ef_map = None if args.ef_map is None else False if args.ef_map == "none" else tuple(float(v) for v in args.ef_map.split(","))
    if args.fit_ef_map and ef_map is None: ef_map = False          # fitted on the model's own readings, without a map
    if ef_map is not None: print(f"sampled with EF calibration {ef_map if ef_map else 'none'}")
    rows = [("multistep", "cfg scale", float(s), {"cfg_scale": float(s)}) for s in args.scales.split(",") if s]
    rows += [("onestep", "MeanFlow steps", int(n), {"meanflow_steps": int(n)}) for n in args.meanflow_steps.split(",") if n]
    rows += [("onestep", "probe scale", float(x), {"onestep_probe_scale": float(x)}) for x in args.probe_scales.split(",") if x]
    print(f"{'model':>9} {'setting':>19} {'MAE':>6} {'R^2':>6} {'slope':>6} {'bias':>6} {'s':>5}")
    for kind, what, value, kw in rows:
        t0 = time.time()
        m, tables = lvfm_adherence(regressor, args.run/"lvfm", args.run/"vae", args.run/"latents", cfg, n_videos=args.videos,
                                   seed=args.seed, kinds=(kind,), guidance_ef=ref, split=args.split, ef_map=ef_map, **kw)
        print(f"{kind:>9} {what:>14} {value:4g} {m[f'ef_mae_{kind}']:6.2f} {m[f'ef_r2_{kind}']:6.2f} {m[f'ef_slope_{kind}']:6.2f} "
              f"{m[f'ef_bias_{kind}']:6.2f} {time.time() - t0:5.0f}", flush=True)
        if args.fit_ef_map:
            a, b = fit_ef_map(tables[kind].requested_ef, tables[kind].measured_ef)
            print(f"{'':>9} fitted EF calibration (a, b): [{a:.2f}, {b:.3f}]", flush=True)


if __name__ == "__main__":
    main()
