"""Where the LVFM's EF control is lost: the instrument, the A-VAE, or the video model, and whose EF the videos follow.

Reads a finished run (`data/`, `latents/`, `vae/`, `lvfm/`, `ef/regressor_real`) and measures everything with the
run's EF regressor trained on real videos:

1. The instrument and the codec. The regressor on the real TEST videos; on the same videos after a round trip through
   the A-VAE (the latent cache decoded frame by frame); and on what the video model is trained to produce (the cache's
   TEST latents at the model's frame count, decoded and written at `synthetic_fps`). If these agree, EF error in
   generated videos comes from the video model, not from the decoder or the frame rate. Temporal roughness
   (`temporal_roughness`) of the real and round-trip clips says whether the decoder adds frame-to-frame flicker.
2. The video models (multi-step and one-step) under five kinds of request, 32 videos each from the first TEST
   anatomies: EF 20..80 (the adherence protocol, with `ef_dependence`'s weights on the requested EF and on the
   anatomy's own EF), the same without an anatomy frame, each anatomy's own EF, and its own EF +15 and -15. First, on
   phantom data, the ceiling: the same requests answered by the phantom itself (`adherence_ceiling`: each anatomy's
   source video re-rendered at the requested EF), i.e. what a perfect generator scores with this regressor.

About 8 minutes at `small` on 2 cores.

    .venv/bin/python benchmarks/ef_control.py runs/small2 [--lvfm other/lvfm] [--preset small] [--videos 32]
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from echoflow.core import EchoVideo, load_model, load_preset, to_uint8
from echoflow.data import LatentVideos, read_echonet, write_echonet
from echoflow.ef import EFRegressor, adherence_ceiling, first_clips, lvfm_adherence, predict_ef, temporal_roughness
from echoflow.metrics import ef_adherence, ef_dependence
from echoflow.synth import synthetic_fps
from echoflow.vae import decode_video, load_latents


def _row(name, pred, extra=""):
    a = ef_adherence(pred.ef.to_numpy(), pred.ef_pred.to_numpy())
    print(f"{name:48s} MAE {a['mae']:5.2f}  R^2 {a['r2']:5.2f}  bias {a['bias']:6.2f}  slope {a['slope']:4.2f}{extra}", flush=True)


def instrument(run: Path, regressor, vae, cfg):
    test = read_echonet(run/"data").select("TEST")
    _row("real TEST videos", predict_ef(regressor, test))
    T = cfg["lvfm"]["frames"]
    cache = LatentVideos(run/"latents", split="TEST", max_frames=T)
    fps = synthetic_fps(cache.table, T)
    with tempfile.TemporaryDirectory(prefix="ef_control_") as d:
        vids = []
        for i in range(len(test)):
            v = test.load(i, masks=False)
            px = decode_video(vae, load_latents(run/"latents", v.name))[:, 0]
            vids.append(EchoVideo(name=v.name, frames=to_uint8(px), fps=v.fps, ef=v.ef, patient_id=v.patient_id, split="TEST"))
        trip = write_echonet(Path(d)/"round_trip", vids, tracings=False)
        _row("A-VAE round trip of the same videos", predict_ef(regressor, trip))
        z = torch.stack([cache[i]["latents"] for i in range(len(cache))])
        px = decode_video(vae, z, scaling=run/"latents")[:, 0]
        vids = [EchoVideo(name=f"c{i:04d}", frames=to_uint8(px[i]), fps=fps, ef=float(cache.table.EF.iloc[i]), patient_id=f"c{i:04d}",
                          split="TEST") for i in range(len(cache))]
        _row(f"their latents at {T} frames ({fps:.1f} fps), decoded",
             predict_ef(regressor, write_echonet(Path(d)/"lvfm_view", vids, tracings=False)))
        for name, src in (("real", test), ("round trip", read_echonet(trip))):
            r = temporal_roughness(first_clips(src, cfg["ef"])[0])
            print(f"  temporal roughness, {name:>10}: |first difference| {r['diff']:.4f}, |second| {r['diff2']:.4f}, ratio {r['ratio']:.2f}")


def requests(regressor, run: Path, lvfm: Path, cfg, n: int):
    from echoflow.phantom import NotPhantomError
    try:
        _, t = adherence_ceiling(regressor, run/"latents", cfg, n_videos=n)
        d = ef_dependence(t.requested_ef, t.measured_ef, t.anatomy_ef)
        _row("ceiling: the phantom's own videos at EF 20..80", t.rename(columns={"requested_ef": "ef", "measured_ef": "ef_pred"}),
             f"  | measured = {d['intercept']:.1f} + {d['requested']:.2f} requested + {d['anatomy']:.2f} anatomy EF")
    except NotPhantomError as err: print(f"ceiling skipped (not the preset's phantom data): {err}")
    rows = (("EF 20..80 (the adherence protocol)", None, True), ("EF 20..80, no anatomy frame", None, False),
            ("each anatomy's own EF", lambda a: a, True), ("own EF + 15 (at most 90)", lambda a: np.minimum(a + 15, 90), True),
            ("own EF - 15 (at least 10)", lambda a: np.maximum(a - 15, 10), True))
    for kind in ("multistep", "onestep"):
        print(f"{kind}:")
        for name, req, anatomy in rows:
            _, tables = lvfm_adherence(regressor, lvfm, run/"vae", run/"latents", cfg, n_videos=n, kinds=(kind,), requested=req,
                                       anatomy=anatomy)
            t = tables[kind].rename(columns={"requested_ef": "ef", "measured_ef": "ef_pred"})
            d = ef_dependence(t.ef, t.ef_pred, t.anatomy_ef) if req is None and anatomy else None
            _row("  " + name, t, f"  | measured = {d['intercept']:.1f} + {d['requested']:.2f} requested + {d['anatomy']:.2f} anatomy EF"
                 if d else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder")
    ap.add_argument("--lvfm", type=Path, help="the video models' folder (default RUN/lvfm)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--skip-instrument", action="store_true", help="only the video models")
    args = ap.parse_args()
    for d in ("data", "latents", "vae/model", "ef/regressor_real/model"):
        if not (args.run/d).exists(): raise SystemExit(f"{args.run/d}: missing; run the pipeline up to the ef stage first")
    cfg = load_preset(args.preset)
    regressor = load_model(EFRegressor, args.run/"ef"/"regressor_real"/"model").eval()
    if not args.skip_instrument:
        instrument(args.run, regressor, load_model(AutoencoderKL, args.run/"vae"/"model").eval(), cfg)
    requests(regressor, args.run, args.lvfm or args.run/"lvfm", cfg, args.videos)


if __name__ == "__main__":
    main()
