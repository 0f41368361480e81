"""EF adherence of an LVFM against the EF guidance scale (the experiments behind `lvfm.cfg_scale` and `lvfm.meanflow_guidance`).

Trains the preset's LVFM (flow matching, or MeanFlow with `--objective meanflow`, optionally with guidance trained in:
`--train-guidance` w' and `--mix` kappa) on the phantom stand-in latents (`phantom_latent_cache`: pooled pixels, no
A-VAE), then animates the first frame of each TEST clip at EF asked on an even grid over 20-80% with each sampling
guidance scale, and reads the EF back with the LV-area instrument (`fit_ef_meter`). Prints MAE, R^2 and the
correlation of asked and measured EF per scale.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ef_guidance.py [--preset default] [--steps 2000] [--scales 1,3,5,8,12]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ef_guidance.py --objective meanflow --train-guidance 8 --mix 0.75 --scales 1
    ... --objective meanflow --train-guidance 8 --mix 0.75 --scales 1 --flow-ratio 0.5 --meanflow-steps 1,2
    ... --guidance-ef none,train          # guide away from the null EF, then from the TRAIN mean EF (`lvfm.guidance_ef`)
    ... --objective meanflow --train-guidance 8 --mix 0.75 --scales 1 --train-guidance-ef train
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from echoflow.core import load_preset
from echoflow.data import LatentVideos
from echoflow.lvfm import build_lvfm, clip_batch, ef_adherence, fit_ef_meter, lvfm_objective, phantom_latent_cache
from echoflow.train import fit, fit_options


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default"); ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--scales", default="1,3,5,8,12"); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--objective", default="flow", choices=["flow", "meanflow"])
    ap.add_argument("--train-guidance", type=float, default=1.0, help="MeanFlow: EF guidance trained in (w')")
    ap.add_argument("--mix", type=float, default=0.0, help="MeanFlow: kappa of the guided target")
    ap.add_argument("--flow-ratio", type=float, default=None, help="MeanFlow: share of rows with r = t (default: the preset's)")
    ap.add_argument("--meanflow-steps", default="1", help="MeanFlow: sampling steps to measure, e.g. 1,2")
    ap.add_argument("--guidance-ef", default="none", help="sampling: EF guided away from, comma-separated ('none': the null EF, "
                    "'train': the TRAIN clips' mean EF, or a number)")
    ap.add_argument("--train-guidance-ef", default="none", help="MeanFlow: the reference EF of the guidance trained in ('none', 'train' or a number)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_preset(args.preset); L = cfg["lvfm"]
    with tempfile.TemporaryDirectory() as work:
        cache, codec, videos = phantom_latent_cache(cfg, Path(work)/"latents")
        train_ds = LatentVideos(cache, split="TRAIN", max_frames=L["frames"], preload=True)
        test_ds = LatentVideos(cache, split="TEST", max_frames=L["frames"], preload=True)
        C, h = train_ds[0]["latents"].shape[0], train_ds[0]["latents"].shape[-1]
        test = clip_batch(test_ds, videos, L["eval_videos"])
        train_mean = float(train_ds.table.EF.mean())
        def reference(v): return None if v == "none" else train_mean if v == "train" else float(v)
        refs = [reference(v) for v in args.guidance_ef.split(",")]
        torch.manual_seed(0)
        meanflow = args.objective == "meanflow"
        L = L | {"meanflow_guidance": args.train_guidance, "meanflow_guidance_mix": args.mix,
                 "guidance_ef": reference(args.train_guidance_ef)}
        if args.flow_ratio is not None: L = L | {"flow_ratio": args.flow_ratio}
        model = build_lvfm(L, C, h, meanflow=meanflow)
        objective = lvfm_objective(L, args.objective)
        loader = DataLoader(train_ds, batch_size=L["batch_size"], shuffle=True, drop_last=True)
        t0 = time.time()
        res = fit(model, objective, loader, steps=args.steps, lr=L["lr"], warmup=min(100, args.steps // 10), progress=False,
                  **fit_options(cfg))
        print(f"preset {args.preset}: {args.steps} {args.objective} steps (trained guidance {args.train_guidance}, kappa {args.mix}, "
              f"reference EF {'null' if L['guidance_ef'] is None else round(L['guidance_ef'], 1)}, flow_ratio {L['flow_ratio']}) "
              f"in {time.time() - t0:.0f} s, last loss {res.history[-1]['loss']:.4f}")
        meter = fit_ef_meter(codec, train_ds, videos, n_calibrate=L["eval_videos"], seg_steps=L["seg_steps"])
        asked = torch.linspace(20, 80, len(test["latents"]))
        print(f"{'scale':>6} {'ref EF':>6} {'steps':>5} {'MAE':>6} {'R2':>7} {'corr':>6} {'bias':>6}  measured range")
        sampling = [{"steps": int(n)} for n in args.meanflow_steps.split(",")] if meanflow else \
                   [{"steps": L["sample_steps"], "method": L["sample_method"]}]
        for s in (float(v) for v in args.scales.split(",")):
            for ref in refs if s != 1 else [None]:   # at scale 1 there is no guidance to point
                for kw in sampling:
                    a, m = ef_adherence(res.ema.eval(), meter, codec, test["latents"][:, :, 0], asked, cfg_scale=s,
                                        guidance_ef=False if ref is None else ref, **kw)
                    print(f"{s:6.1f} {'null' if ref is None else f'{ref:.1f}':>6} {kw['steps']:5d} {a['mae']:6.2f} {a['r2']:7.3f} "
                          f"{np.corrcoef(asked.numpy(), m.numpy())[0, 1]:6.3f} {float((m - asked).mean()):6.2f}  {m.min():.1f}-{m.max():.1f}", flush=True)


if __name__ == "__main__":
    main()
