"""Where the synthetic videos' frame-to-frame flicker comes from, and what it does to the EF figures.

Reads a finished run (`data/`, `synth/`, `latents/`, `vae/`, `lvfm/flow_model`, `ef/regressor_real`,
`ef/regressor_synthetic`) and prints:

1. How the run's two EF regressors (trained on real videos, and on the synthetic set alone) read real and synthetic
   TEST videos (two clips a video), as they are and smoothed once in time ([1, 2, 1] / 4): a regressor that reads EF from flicker loses
   much more to the smoothing than one that reads it from wall motion. Mean bias (predicted - reference) and slope.
2. The multi-step model's videos for the first TEST anatomies at EF 20..80 (the adherence protocol, the model's own
   guidance, or the null EF's with `--null-guidance`, and probe steering), started from independent noise and from
   noise correlated over frames (AR(1), `--rho`; same marginal distribution): the temporal high-pass of the generated latents (clip minus its smoothed self, against
   the real latents'), its correlation with the starting noise's high-pass, the decoded clips' `temporal_roughness`,
   and the EF the real-trained regressor reads (MAE, bias, slope).

About 4 minutes at `small` on 2 cores.

    .venv/bin/python benchmarks/flicker.py runs/small [--preset small] [--videos 32] [--rho 0,0.5,0.8,0.95] [--null-guidance]
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from echoflow.core import EchoVideo, load_model, load_preset, to_uint8
from echoflow.data import LatentVideos, read_echonet
from echoflow.ef import EFRegressor, predict_ef, read_requests, temporal_roughness
from echoflow.lvfm import generate, load_lvfm
from echoflow.metrics import ef_adherence
from echoflow.synth import synthetic_fps
from echoflow.vae import decode_video


def smooth_time(x: torch.Tensor, dim: int = 2) -> torch.Tensor:
    "One pass of [1, 2, 1] / 4 along `dim`, edges repeated."
    n = x.shape[dim]
    xp = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, n - 1, 1)], dim)
    return 0.25 * xp.narrow(dim, 0, n) + 0.5 * xp.narrow(dim, 1, n) + 0.25 * xp.narrow(dim, 2, n)


def highpass(z: torch.Tensor) -> torch.Tensor:
    "A latent or pixel clip (B, C, T, ...) minus its smoothed self: what changes from one frame to the next."
    return z - smooth_time(z)


def ar1_noise(e: torch.Tensor, rho: float) -> torch.Tensor:
    "Independent noise (B, C, T, ...) made AR(1) over frames with coefficient `rho`, each frame still N(0, 1)."
    x = e.clone()
    for k in range(1, e.shape[2]): x[:, :, k] = rho * x[:, :, k - 1] + (1 - rho ** 2) ** 0.5 * e[:, :, k]
    return x


def predict_smoothed(model: EFRegressor, source, smooth: bool):
    "`predict_ef` on the TEST videos (two clips a video), the clips smoothed once in time before the regressor when `smooth`."
    hook = model.register_forward_pre_hook(lambda m, args: (smooth_time(args[0]),)) if smooth else None
    try: return predict_ef(model, source, split="TEST", clips=2)
    finally:
        if hook is not None: hook.remove()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--rho", default="0,0.5,0.8,0.95", help="AR(1) coefficients of the starting noise over frames (0: independent)")
    ap.add_argument("--null-guidance", action="store_true", help="guide away from the null EF whatever the model's reference EF (lvfm.guidance_ef)")
    args = ap.parse_args()
    run, L = args.run, load_preset(args.preset)["lvfm"]
    need = [run/"data", run/"synth", run/"latents", run/"vae"/"model", run/"lvfm"/"flow_model", run/"ef"/"regressor_real"/"model",
            run/"ef"/"regressor_synthetic"/"model"]
    missing = [str(p) for p in need if not p.exists()]
    if missing: raise SystemExit(f"{run}: not a finished run, missing {', '.join(missing)}")
    regs = {k: load_model(EFRegressor, run/"ef"/f"regressor_{k}"/"model").eval() for k in ("real", "synthetic")}

    print("1. the EF regressors on TEST videos, as they are and smoothed once in time: bias (slope)")
    print(f"{'regressor':>10} {'videos':>10} {'as they are':>14} {'smoothed':>14}")
    sources = {"real": read_echonet(run/"data"), "synthetic": read_echonet(run/"synth")}   # read once, reused by every row
    for reg_name, reg in regs.items():
        for vid_name, source in sources.items():
            cells = []
            for smooth in (False, True):
                p = predict_smoothed(reg, source, smooth)
                a = ef_adherence(p.ef, p.ef_pred, n_boot=0)
                cells.append(f"{a['bias']:+6.1f} ({a['slope']:.2f})")
            print(f"{reg_name:>10} {vid_name:>10} {cells[0]:>14} {cells[1]:>14}", flush=True)

    flow = load_lvfm(run/"lvfm"/"flow_model").eval()
    vae = load_model(AutoencoderKL, run/"vae"/"model").eval()
    test = LatentVideos(run/"latents", split="TEST", max_frames=L["frames"])
    n, T = args.videos, L["frames"]
    real = torch.stack([test[i % len(test)]["latents"] for i in range(n)])
    anatomies, ef = real[:, :, 0], torch.linspace(20, 80, n)
    fps = synthetic_fps(test.table, T)
    e = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    print(f"\n2. the multi-step model, {n} TEST anatomies at EF 20..80; real latents' |high-pass| {highpass(real).abs().mean():.3f}, "
          f"decoded real clips' |first difference| {temporal_roughness(decode_video(vae, real, scaling=run/'latents'))['diff']:.4f}")
    print(f"{'rho':>5} {'|high-pass|':>12} {'corr noise':>11} {'px diff':>8} {'ratio':>6} {'EF MAE':>7} {'bias':>6} {'slope':>6}")
    for rho in (float(r) for r in args.rho.split(",")):
        x0 = ar1_noise(e, rho)
        z = torch.cat([generate(flow, ef[i:i + 8], anatomy=anatomies[i:i + 8], num_frames=T, noise=x0[i:i + 8],
                                steps=L["sample_steps"], method=L["sample_method"], guidance_ef=False if args.null_guidance else None)
                       for i in range(0, n, 8)])
        hz, hx = highpass(z), highpass(x0)
        corr = float((hz * hx).sum() / (hz.norm() * hx.norm()))
        px = decode_video(vae, z, scaling=run/"latents")[:, 0]
        rough = temporal_roughness(px[:, None])
        videos = [EchoVideo(name=f"v_{i:04d}", frames=to_uint8(px[i]), fps=fps, ef=float(ef[i]), patient_id=f"v_{i:04d}", split="TEST")
                  for i in range(n)]
        m, _ = read_requests(regs["real"], videos, np.full(n, np.nan), "v", dependence=False)
        print(f"{rho:5.2f} {hz.abs().mean():12.3f} {corr:11.2f} {rough['diff']:8.4f} {rough['ratio']:6.2f} {m['ef_mae_v']:7.2f} "
              f"{m['ef_bias_v']:+6.1f} {m['ef_slope_v']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
