"""Verification AUC and copy catching of the ReID encoder under changed training settings, on a finished run's latents.

Trains one encoder per setting with `train_reid` on the run's TRAIN latent frames (the preset's `reid` section with the
setting's changes), measures frame-level and video-level same-vs-different-patient AUC on the VAL and TEST patients,
builds the privacy filter (threshold calibrated on VAL) and plants 500 copies of TRAIN frames of each perturbation
type among TEST frames (no A-VAE round trip here, to keep it fast). Prints one row per setting: the table in
`40_privacy`. At `small` on one thread, two sweeps side by side: 1.5-4.5 min per setting (16 views 6 min, 3000 steps
8.5 min, width 64 9.5 min).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/reid_sweep.py runs/small [--preset small] [--settings preset,no_shift,...] [-p key=value]

The sweep table of `40_privacy` was printed before `reid.copy_weight` and `reid.members` existed, i.e. with
`-p reid.copy_weight=0.5 -p reid.members=1`; the presets now use 0 and 3.

Settings (every row of the 40_privacy table): preset, steps_750, steps_3000, width_64, views_16, temperature_0.2,
dim_128_t_0.05, weight_decay_0.05, affine, no_shift, no_shift_no_blur, no_shift_no_blur_tta (the previous one's encoder
with embeddings averaged over +-1 px shifts); copy_0, copy_0.1, copy_0.5 (weight of the twin-copy term), members_1,
members_3, members_5 (an ensemble of that many encoders, seeds seed..seed+n-1). `--seed` moves every setting's seeds.
"""
import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from echoflow.core import load_preset
from echoflow.pipeline import parse_overrides
from echoflow.privacy import (PatientBatches, PrivacyFilter, ReIDEncoder, audit, embed, pair_similarities, read_latent_cache,
                              roc_auc, shift_latents, train_reid)

SETTINGS = {   # name -> changes from the preset: reid keys, or batch / optimiser options
    "preset": {}, "steps_750": {"steps": 750}, "steps_3000": {"steps": 3000}, "width_64": {"width": 64},
    "views_16": {"views": 16, "batch_size": 256}, "temperature_0.2": {"temperature": 0.2},
    "dim_128_t_0.05": {"embed_dim": 128, "temperature": 0.05}, "weight_decay_0.05": {"weight_decay": 0.05},
    "affine": {"affine": (4.0, 0.05, 1.0)}, "no_shift": {"max_shift": 0}, "no_shift_no_blur": {"max_shift": 0, "blur": 0.0},
    "no_shift_no_blur_tta": {"max_shift": 0, "blur": 0.0, "tta": 1},
    "copy_0": {"copy_weight": 0.0}, "copy_0.1": {"copy_weight": 0.1}, "copy_0.5": {"copy_weight": 0.5},
    "members_1": {"members": 1}, "members_3": {"members": 3}, "members_5": {"members": 5},
}


class AffineBatches:
    "Batches of `PatientBatches` with a random rotation (+-deg), scale (+-frac) and translation (+-px) per frame."
    def __init__(self, batches, deg: float, scale: float, px: float): self.batches, self.deg, self.scale, self.px = batches, deg, scale, px
    def __len__(self): return len(self.batches)
    def __iter__(self):
        g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31 - 1, ()).item()))
        for batch in self.batches:
            x = batch["latents"]; n = len(x)
            ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(self.deg)
            sc = 1 + (torch.rand(n, generator=g) * 2 - 1) * self.scale
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0] = torch.cos(ang) / sc; theta[:, 0, 1] = -torch.sin(ang) / sc
            theta[:, 1, 0] = torch.sin(ang) / sc; theta[:, 1, 1] = torch.cos(ang) / sc
            theta[:, :, 2] = (torch.rand(n, 2, generator=g) * 2 - 1) * self.px * 2 / x.shape[-1]
            grid = F.affine_grid(theta, x.shape, align_corners=False)
            yield batch | {"latents": F.grid_sample(x, grid, padding_mode="border", align_corners=False)}


class ShiftAveraged(nn.Module):
    "An encoder whose embedding is the normalised mean over every shift of the input by up to `radius` latent pixels."
    def __init__(self, encoder: ReIDEncoder, radius: int = 1):
        super().__init__(); self.encoder, self.radius, self.config = encoder, radius, encoder.config
    def forward(self, x):
        r = self.radius
        z = torch.stack([self.encoder(shift_latents(x, dy, dx)) for dy in range(-r, r + 1) for dx in range(-r, r + 1)])
        return F.normalize(z.mean(0), dim=1)


def train(splits: dict, cfg: dict, change: dict, seed: int = 0) -> ReIDEncoder:
    cfg = cfg | {"reid": cfg["reid"] | {k: v for k, v in change.items() if k in cfg["reid"]}}
    batches = PatientBatches(splits["TRAIN"], batch_size=cfg["reid"]["batch_size"], views=change.get("views", 8),
                             max_shift=change.get("max_shift", 1), blur=change.get("blur", 1.0))
    if "affine" in change: batches = AffineBatches(batches, *change["affine"])
    return train_reid(splits["TRAIN"], cfg, seed=seed, weight_decay=change.get("weight_decay", 0.0), batches=batches).ema.eval()


def measure(model: nn.Module, splits: dict, n_planted: int = 500) -> dict:
    out = {}
    for name in ("VAL", "TEST"):
        e = splits[name].per_video(16)
        emb = embed(model, e.frames)
        out[name] = roc_auc(*pair_similarities(emb, e.patient, e.video))
        per_video = F.normalize(torch.zeros(len(e.video_names), emb.shape[1]).index_add_(0, e.video, emb), dim=1)
        patient_of_video = torch.zeros(len(e.video_names), dtype=torch.long).index_put_((e.video,), e.patient)
        out[name + "_video"] = roc_auc(*pair_similarities(per_video, patient_of_video))
    filt = PrivacyFilter.build(model, splits["TRAIN"], splits["VAL"], percentile=95.0)
    rep = audit(filt, splits["TRAIN"], splits["TEST"], splits["TEST"], vae=None, n_planted=n_planted)
    return out | {"caught": rep["planted_caught_by_type"], "false_reject": rep["false_reject"], "threshold": filt.threshold}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with a latents/ stage output")
    ap.add_argument("--preset", default="small"); ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--threads", type=int, default=1); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="preset override, e.g. -p reid.copy_weight=0.5 -p reid.members=1 (the setting the 40_privacy sweep table used)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown: raise SystemExit(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    if not (args.run/"latents").exists(): raise SystemExit(f"{args.run/'latents'}: missing; run the pipeline up to the latents stage first")
    cfg = load_preset(args.preset, parse_overrides(args.overrides))
    splits = read_latent_cache(args.run/"latents")
    print(f"{'setting':>22} {'AUC VAL':>8} {'TEST':>6} {'video VAL':>9} {'TEST':>6} {'exact':>6} {'noise':>6} {'shift':>6} {'gain':>6} "
          f"{'false rej':>9} {'s':>5}")
    trained = {}
    for name in names:
        change, t0 = SETTINGS[name], time.time()
        key = tuple(sorted((k, v) for k, v in change.items() if k != "tta"))
        if key not in trained: trained[key] = train(splits, cfg, change, args.seed)
        model = ShiftAveraged(trained[key], change["tta"]) if change.get("tta") else trained[key]
        m = measure(model, splits)
        c = m["caught"]
        print(f"{name:>22} {m['VAL']:8.3f} {m['TEST']:6.3f} {m['VAL_video']:9.3f} {m['TEST_video']:6.3f} {c['exact']:6.3f} {c['noise']:6.3f} "
              f"{c['shift']:6.3f} {c['gain']:6.3f} {m['false_reject']:9.4f} {time.time() - t0:5.0f}", flush=True)


if __name__ == "__main__":
    main()
