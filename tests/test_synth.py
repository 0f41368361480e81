"Tests of echoflow.synth: split sizes, EF draws, the privacy-filtered export, and the exported set read back and trained on as is."
import numpy as np
import pandas as pd
import pytest
import torch

from echoflow.core import load_preset
from echoflow.data import EchoClips, read_echonet
from echoflow.ef import train_ef_regressor, evaluate_ef
from echoflow.privacy import PooledCodec, PrivacyFilter, PrivacyLeakError, ReIDEncoder, embed
from echoflow.synth import draw_efs, generate_synthetic_dataset, split_sizes, synthetic_fps


# ---------------------------------------------------------------- sizes, EF, fps
def test_split_sizes():
    t = pd.DataFrame({"Split": ["TRAIN"] * 10 + ["VAL"] * 3 + ["test"] * 2})
    assert split_sizes(t) == {"TRAIN": 10, "VAL": 3, "TEST": 2}
    assert split_sizes(t, 0.5) == {"TRAIN": 5, "VAL": 2, "TEST": 1}
    assert split_sizes(t, 0.01) == {"TRAIN": 1, "VAL": 1, "TEST": 1}            # a split the real set has is never empty
    assert split_sizes(pd.DataFrame({"Split": ["TRAIN"] * 4})) == {"TRAIN": 4, "VAL": 0, "TEST": 0}
    with pytest.raises(ValueError, match="multiplier"): split_sizes(t, 0)
    with pytest.raises(ValueError, match="no TRAIN"): split_sizes(pd.DataFrame({"Split": ["VAL"]}))
    with pytest.raises(ValueError, match="no Split column"): split_sizes(pd.DataFrame({"x": [1]}))


def test_draw_efs():
    g = np.random.default_rng(0)
    real = np.r_[np.full(90, 60.0), np.full(10, 25.0)]
    e = draw_efs(5000, "real", real, g)
    assert set(np.unique(e)) == {25.0, 60.0} and abs((e == 25).mean() - 0.1) < 0.02
    u = draw_efs(5000, "uniform", generator=g)
    assert 10 <= u.min() < 11 and 89 < u.max() <= 90 and abs(u.mean() - 50) < 1
    with pytest.raises(ValueError, match="needs the real training EFs"): draw_efs(3, "real", [np.nan])
    with pytest.raises(ValueError, match="'real' or 'uniform'"): draw_efs(3, "normal")


def test_synthetic_fps():
    t = pd.DataFrame({"FPS": [32.0, 32.0, 50.0], "NumberOfFrames": [48, 48, 10]})
    # 48 frames at 32 fps squeezed into 16: 32 * 15 / 47; a 10-frame video already fits: its own 50 fps
    assert synthetic_fps(t, 16) == pytest.approx(32 * 15 / 47)
    assert synthetic_fps(t.iloc[2:], 16) == 50.0
    with pytest.raises(ValueError, match="FPS"): synthetic_fps(pd.DataFrame({"FPS": [np.nan], "NumberOfFrames": [3]}), 8)


# ---------------------------------------------------------------- the export, with stand-in models
LATENT = (4, 8, 8)


@pytest.fixture
def parts():
    "A bank of 6 training anatomies behind a privacy filter, a sampler that plants two of them, an EF-driven animator."
    g = torch.Generator().manual_seed(123)
    bank = torch.randn(6, *LATENT, generator=g)
    torch.manual_seed(0)
    enc = ReIDEncoder(in_channels=4, embed_dim=16, widths=(8, 16)).eval()
    filt = PrivacyFilter(enc, embed(enc, bank), torch.arange(6), [f"P{i}" for i in range(6)], 0.995, LATENT)
    state = {"calls": 0}

    def sample(n, view, generator):
        state["calls"] += 1
        z = torch.randn(n, *LATENT, generator=generator)
        if state["calls"] == 1: z[:2] = bank[:2] + 1e-4 * torch.randn(2, *LATENT)   # near-exact copies of two training anatomies
        return z

    def animate(anatomy, ef, generator):
        # a disk-like intensity beat: the first latent channel dims with an amplitude set by EF, over two cycles
        T = 16
        beat = (ef[:, None] / 100) * (0.5 - 0.5 * torch.cos(4 * torch.pi * torch.arange(T) / T))[None]
        z = anatomy[:, None].repeat(1, T, 1, 1, 1)
        z[:, :, 0] -= 3 * beat[:, :, None, None]
        return z

    return {"filter": filt, "sample": sample, "animate": animate, "bank": bank}


def _export(path, parts, sizes=None, **kw):
    sizes = sizes or {"TRAIN": 12, "VAL": 3, "TEST": 3}
    n = sum(sizes.values())
    args = dict(sizes=sizes, sample_anatomies=parts["sample"], privacy_filter=parts["filter"], animate=parts["animate"],
                decode=PooledCodec(4).decode, efs=draw_efs(n, "uniform", generator=np.random.default_rng(0)), fps=12.5,
                batch_size=4, seed=1) | kw
    return generate_synthetic_dataset(path, **args)


def test_export_layout_privacy_and_read_back(parts, tmp_path):
    (tmp_path/"synth").mkdir(); (tmp_path/"synth"/"52_synth.ipynb").write_text("{}")   # the executed notebook stays
    stats = _export(tmp_path/"synth", parts)
    root = tmp_path/"synth"
    assert (root/"52_synth.ipynb").exists() and (root/"Videos").is_dir()
    src = read_echonet(root)
    assert src.table.Split.value_counts().to_dict() == {"TRAIN": 12, "VAL": 3, "TEST": 3}
    assert src.table.FPS.eq(12.5).all() and src.table.NumberOfFrames.eq(16).all()
    v = src[0]
    assert v.frames.shape == (16, 32, 32) and v.frames.dtype == np.uint8
    # privacy: the audit lists every generated anatomy; the planted copies were rejected; every exported video passed
    scores = pd.read_csv(root/"privacy_scores.csv")
    assert list(scores.columns) == ["FileName", "Similarity", "NearestPatient", "Threshold", "Kept"]
    assert len(scores) == stats["anatomies_generated"] and stats["anatomies_rejected"] == int((~scores.Kept).sum()) >= 2
    assert set(scores.NearestPatient[~scores.Kept]) >= {"P0", "P1"}
    assert set(src.table.FileName) <= set(scores.FileName[scores.Kept])
    assert (src.table.PrivacySimilarity < parts["filter"].threshold).all()
    # the exported anatomies (first latent frame) score below the threshold when scored again from disk
    assert stats["max_similarity_exported"] < parts["filter"].threshold
    # EF column holds the EF asked for; PatientID unique per synthetic video
    assert src.table.EF.between(10, 90).all() and src.table.PatientID.is_unique


def test_exported_set_trains_the_regressor_with_no_conversion(parts, tmp_path):
    _export(tmp_path/"synth", parts)
    cfg = load_preset("smoke")
    cfg["ef"] |= {"frames": 8, "period": 1, "fps": 0.0, "size": 0, "width": 4, "steps": 3, "batch_size": 4}
    res = train_ef_regressor(tmp_path/"synth", cfg)                                  # a folder path, nothing converted
    assert res.step == 3 and np.isfinite(res.history[-1]["loss"])
    m, pred = evaluate_ef(res.ema, tmp_path/"synth", split="TEST", n_boot=20)
    assert len(pred) == 3 and np.isfinite(pred.ef_pred).all()
    clips = EchoClips(tmp_path/"synth", split="TRAIN", length=8)                     # the data module's clip reader
    assert clips[0]["video"].shape == (1, 8, 32, 32)


def test_export_refuses_what_the_filter_rejects(parts, tmp_path):
    bank = parts["bank"]
    copies = lambda n, view, generator: bank[torch.arange(n) % 6] + 1e-5   # a generator that only memorised
    with pytest.raises(RuntimeError, match="passed the privacy filter after 3 rounds"):
        _export(tmp_path/"leak", parts, sample_anatomies=copies, max_rounds=3)
    assert not (tmp_path/"leak").exists() and not list(tmp_path.glob(".leak*"))


def test_check_passed_is_the_last_gate(parts, tmp_path):
    "Even a filter whose keep decision disagreed with its scores could not leak: the kept set is re-scored before export."
    class Lying(PrivacyFilter):
        def scores(self, latents, batch_size=512):
            sim, who = super().scores(latents, batch_size)
            return (sim * 0 if getattr(self, "lie", True) else sim), who
    f = parts["filter"]
    liar = Lying(f.encoder, f.bank, f.bank_patient, f.patient_ids, f.threshold, f.latent_shape)
    def check(latents, names=None):
        liar.lie = False
        try: return PrivacyFilter.check_passed(liar, latents, names)
        finally: liar.lie = True
    liar.check_passed = check
    with pytest.raises(PrivacyLeakError): _export(tmp_path/"x", parts, privacy_filter=liar)
    assert not (tmp_path/"x").exists()


@pytest.mark.parametrize("kw, message", [({"efs": [50.0] * 3}, "efs has 3 values for 18 videos"),
                                         ({"views": ["A4C"] * 2}, "views has 2 values"),
                                         ({"oversample": 0.5}, "oversample"), ({"fps": 0}, "fps"),
                                         ({"sizes": {"TRAIN": 0}}, "at least one video")])
def test_export_bad_arguments(parts, tmp_path, kw, message):
    with pytest.raises(ValueError, match=message): _export(tmp_path/"bad", parts, **kw)


def test_animate_shape_checked(parts, tmp_path):
    with pytest.raises(ValueError, match=r"\(B, T, C, h, w\)"):
        _export(tmp_path/"bad", parts, animate=lambda a, ef, g: a)
    assert not (tmp_path/"bad").exists()


@pytest.mark.slow
def test_stand_in_pipeline_end_to_end(tmp_path):
    "Phantom -> tiny LIFM, ReID filter and LVFM -> export -> read back -> EF regressor trains on it."
    from echoflow.synth import lifm_sampler, lvfm_animator, phantom_components
    cfg = load_preset("smoke")
    parts = phantom_components(cfg, "onestep", seed=0)
    sizes = split_sizes(parts["real"])
    n = sum(sizes.values())
    stats = generate_synthetic_dataset(tmp_path/"synth", sizes=sizes, sample_anatomies=lifm_sampler(parts["lifm"], 4),
                                       privacy_filter=parts["filter"], animate=lvfm_animator(parts["lvfm"]), decode=parts["decode"],
                                       efs=draw_efs(n, "real", parts["real"].EF), fps=synthetic_fps(parts["real"], parts["lvfm"].config.max_frames))
    src = read_echonet(tmp_path/"synth")
    assert len(src) == n == stats["videos"]
    assert src[0].frames.shape == (cfg["lvfm"]["frames"], cfg["data"]["size"], cfg["data"]["size"])
    res = train_ef_regressor(src, cfg, steps=3)
    assert np.isfinite(res.history[-1]["loss"])


def test_load_components_from_stage_folders(tmp_path):
    "The stage folders as the pipeline writes them (untrained tiny models): load, export, read back."
    from echoflow.core import save_model
    from echoflow.data import write_echonet
    from echoflow.lifm import build_lifm
    from echoflow.lvfm import build_lvfm
    from echoflow.privacy import read_latent_cache
    from echoflow.synth import lifm_sampler, load_components, lvfm_animator
    from echoflow.vae import build_vae, encode_dataset
    from test_ef import beating_disk_videos
    cfg = load_preset("smoke")
    data = write_echonet(tmp_path/"data", beating_disk_videos(n_patients=12, frames=12, seed=4), tracings=False)
    vae = build_vae(cfg, size=32); save_model(vae, tmp_path/"vae"/"model")
    cache = encode_dataset(vae, data, tmp_path/"latents", progress=False)
    torch.manual_seed(0)
    save_model(build_lifm(cfg["lifm"], (4, 8, 8)), tmp_path/"lifm"/"model")
    frames = read_latent_cache(cache)
    enc = ReIDEncoder(in_channels=4, embed_dim=16, widths=(8, 16))
    PrivacyFilter.build(enc, frames["TRAIN"], frames["VAL"], percentile=95.0).save(tmp_path/"reid"/"model")
    for name, mf in (("flow_model", False), ("meanflow_model", True)): save_model(build_lvfm(cfg["lvfm"], 4, 8, meanflow=mf), tmp_path/"lvfm"/name)
    dirs = {k: tmp_path/k.replace("_dir", "") for k in ("vae_dir", "lifm_dir", "reid_dir", "lvfm_dir")}
    parts = load_components(data_dir=data, latents_dir=cache, sampler="multistep", **dirs)
    assert not parts["lvfm"].config.meanflow
    sizes = split_sizes(parts["real"], 0.5)
    n = sum(sizes.values())
    stats = generate_synthetic_dataset(tmp_path/"synth", sizes=sizes, sample_anatomies=lifm_sampler(parts["lifm"], 2),
                                       privacy_filter=parts["filter"], animate=lvfm_animator(parts["lvfm"], steps=2), decode=parts["decode"],
                                       efs=draw_efs(n, "real", parts["real"].EF), fps=synthetic_fps(parts["real"], 8), oversample=3.0)
    src = read_echonet(tmp_path/"synth")
    assert len(src) == n and src[0].frames.shape == (8, 32, 32)
    assert stats["max_similarity_exported"] < parts["filter"].threshold
    with pytest.raises(ValueError, match="synth.sampler"): load_components(data_dir=data, latents_dir=cache, sampler="fast", **dirs)


def test_lvfm_animator_guides_as_asked():
    "guidance_ef reaches the sampler: the model's own reference (None), the null EF (False) or a number, each a different video."
    from echoflow.lvfm import build_lvfm
    from echoflow.synth import lvfm_animator
    L = dict(load_preset("smoke", {"lvfm.guidance_ef": 50.0})["lvfm"])
    torch.manual_seed(0)
    model = build_lvfm(L, 4, 8).eval()
    with torch.no_grad():
        for p in model.parameters(): p.add_(0.05 * torch.randn_like(p))               # a zero-initialised head would ignore EF
    anatomy, ef = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([30.0, 70.0])
    def video(**kw):
        with torch.no_grad(): return lvfm_animator(model, steps=2, **kw)(anatomy, ef, torch.Generator().manual_seed(2))
    own, null, at50, at20 = video(), video(guidance_ef=False), video(guidance_ef=50.0), video(guidance_ef=20.0)
    assert own.shape == (2, L["frames"], 4, 8, 8)
    assert torch.equal(own, at50)                                                     # the model's config says 50
    assert (own - null).abs().max() > 1e-4 and (own - at20).abs().max() > 1e-4
