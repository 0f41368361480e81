"""The ReID privacy filter as a security boundary: copies are caught, nothing at or above the threshold is kept,
bad input fails loudly, the saved filter is pickle-free and scores identically, the threshold and the ROC are right."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from echoflow.core import load_preset
from echoflow.privacy import (PERTURBATIONS, LatentFrames, PatientBatches, PooledCodec, PrivacyFilter, PrivacyLeakError,
                              ReIDEncoder, audit, best_similarity, check_latents, embed, pair_similarities, perturb,
                              read_latent_cache, reid_threshold, roc_auc, roc_curve, round_trip, shift_latents, supcon_loss,
                              train_reid, write_privacy_scores)

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (4, 8, 8)


def toy_patients(n_patients=24, videos=2, frames=8, seed=0):
    "Latent videos of toy patients: a smooth per-patient anatomy, a per-video offset and gain, a per-frame 'beat', noise."
    g = torch.Generator().manual_seed(seed)
    vids, pids = {}, {}
    for p in range(n_patients):
        anatomy = F.interpolate(torch.randn(1, 4, 4, 4, generator=g), size=8, mode="bilinear", align_corners=False)[0]
        beat = F.interpolate(torch.randn(1, 4, 2, 2, generator=g), size=8, mode="bilinear", align_corners=False)[0]
        for v in range(videos):
            phase = torch.rand((), generator=g) * 2 * math.pi
            t = torch.arange(frames)
            lat = anatomy + 0.3 * torch.sin(phase + 2 * math.pi * t / frames)[:, None, None, None] * beat
            lat = (1 + 0.1 * torch.randn((), generator=g)) * lat + 0.05 * torch.randn(lat.shape, generator=g)
            vids[f"P{p:02d}_{v}"], pids[f"P{p:02d}_{v}"] = lat, f"P{p:02d}"
    return LatentFrames.from_videos(vids, pids)


@pytest.fixture(scope="module")
def splits():
    data = toy_patients()
    ids = data.patient_ids
    return data.of_patients(ids[:14]), data.of_patients(ids[14:19]), data.of_patients(ids[19:])


@pytest.fixture(scope="module")
def trained(splits):
    torch.set_num_threads(1)
    cfg = load_preset("smoke", {"reid.steps": 150, "reid.width": 16, "reid.embed_dim": 32})
    cfg["train"]["log_every"] = 50
    return train_reid(splits[0], cfg).ema


@pytest.fixture(scope="module")
def reid_filter(trained, splits):
    return PrivacyFilter.build(trained, splits[0], splits[1], percentile=95.0)


# ---------------------------------------------------------------- the security property
def test_filtering_planted_copies_keeps_nothing_at_or_above_threshold(reid_filter, splits, tmp_path):
    train, _, test = splits
    g = torch.Generator().manual_seed(1)
    src = torch.randperm(len(train), generator=g)[:40]
    planted = torch.cat([perturb(train.frames[src], k, g) for k in ("exact", "noise", "shift", "gain")])
    batch = torch.cat([test.frames, planted])[torch.randperm(len(test) + len(planted), generator=g)]
    kept, keep, sim, _ = reid_filter.filter(batch)
    assert keep.sum() < len(batch)                     # it did reject something
    assert bool((sim[keep] < reid_filter.threshold).all())
    # the downstream check, on a reloaded filter (as the synthetic-data stage does): nothing kept reaches the threshold
    reid_filter.save(tmp_path/"model")
    again = PrivacyFilter.load(tmp_path/"model")
    assert float(again.scores(kept)[0].max()) < again.threshold
    again.check_passed(kept)
    with pytest.raises(PrivacyLeakError, match="reach the privacy threshold"):
        again.check_passed(planted[:5], names=[f"s{i}.avi" for i in range(5)])
    # the exact copies are all rejected and traced back to their patient
    exact_sim, who = reid_filter.scores(train.frames[src])
    assert bool((exact_sim >= reid_filter.threshold).all())
    assert who == [train.patient_ids[i] for i in train.patient[src].tolist()]


def test_equal_to_threshold_is_rejected(reid_filter, splits):
    x = splits[2].frames[:4]
    sim, _ = reid_filter.scores(x)
    at = PrivacyFilter(reid_filter.encoder, reid_filter.bank, reid_filter.bank_patient, reid_filter.patient_ids,
                       float(sim[1]), reid_filter.latent_shape)
    keep = at.keep_mask(x)
    assert not keep[1]
    assert keep.tolist() == (sim < float(sim[1])).tolist()


def test_trained_encoder_separates_patients_and_catches_copies(reid_filter, trained, splits):
    train, val, test = splits
    e = embed(trained, test.frames)
    pos, neg = pair_similarities(e, test.patient, test.video)
    assert roc_auc(pos, neg) > 0.9
    rep = audit(reid_filter, train, test, test, vae=None, n_planted=60)
    assert rep["planted_caught_by_type"]["exact"] == 1.0
    assert rep["planted_caught_by_type"]["gain"] == 1.0
    assert rep["planted_caught_by_type"]["noise"] >= 0.95
    assert rep["nearest_is_source"]["exact"] == 1.0
    assert rep["kept_max_similarity"] < reid_filter.threshold


def test_scores_do_not_depend_on_batch_composition(reid_filter, splits):
    x = splits[2].frames[:20]
    whole = reid_filter.scores(x)[0]
    parts = torch.cat([reid_filter.scores(x[i:i + 3])[0] for i in range(0, 20, 3)])
    torch.testing.assert_close(whole, parts, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- bad input
def test_empty_bank_raises(trained, splits):
    with pytest.raises(ValueError, match="reference bank .* is empty"):
        PrivacyFilter(trained, torch.zeros(0, trained.config.embed_dim), torch.zeros(0, dtype=torch.long), [], 0.9, SHAPE)
    with pytest.raises(ValueError, match="no training latents"):
        PrivacyFilter.build(trained, splits[0].subset(torch.zeros(len(splits[0]), dtype=torch.bool)), splits[1])
    with pytest.raises(ValueError, match="bank is empty"):
        best_similarity(torch.randn(3, 4), torch.zeros(0, 4))


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(4, 8, 8), r"add a batch dimension"),
    (torch.zeros(2, 3, 8, 8), r"\(B, 4, 8, 8\).*got \(2, 3, 8, 8\)"),
    (torch.zeros(2, 4, 14, 14), r"\(B, 4, 8, 8\).*got \(2, 4, 14, 14\)"),
    (torch.zeros(2, 1, 4, 8, 8), r"4-D"),
    (torch.zeros(8), r"4-D"),
    (torch.full((2, 4, 8, 8), float("nan")), r"NaN"),
    ([[0.0]], r"must be a tensor"),
])
def test_wrong_latents_raise(reid_filter, bad, message):
    with pytest.raises(ValueError, match=message):
        reid_filter.scores(bad)
    with pytest.raises(ValueError, match=message):
        reid_filter.keep_mask(bad)


def test_bad_filter_parts_raise(trained, reid_filter):
    b, bp, ids = reid_filter.bank, reid_filter.bank_patient, reid_filter.patient_ids
    with pytest.raises(ValueError, match="dims"):
        PrivacyFilter(trained, b[:, :5], bp, ids, 0.9, SHAPE)
    with pytest.raises(ValueError, match="threshold"):
        PrivacyFilter(trained, b, bp, ids, float("nan"), SHAPE)
    with pytest.raises(ValueError, match="threshold"):
        PrivacyFilter(trained, b, bp, ids, 1.5, SHAPE)
    with pytest.raises(ValueError, match="bank_patient"):
        PrivacyFilter(trained, b, bp[:-1], ids, 0.9, SHAPE)
    with pytest.raises(ValueError, match="patient_ids"):
        PrivacyFilter(trained, b, bp, ids[:1], 0.9, SHAPE)
    with pytest.raises(ValueError, match="latent_shape"):
        PrivacyFilter(trained, b, bp, ids, 0.9, (3, 8, 8))


def test_build_refuses_overlapping_or_missing_heldout(trained, splits):
    train, val, _ = splits
    with pytest.raises(ValueError, match="overlap"):
        PrivacyFilter.build(trained, train, train.of_patients(train.patient_ids[:2]))
    with pytest.raises(ValueError, match="held-out"):
        PrivacyFilter.build(trained, train, val.subset(torch.zeros(len(val), dtype=torch.bool)))


# ---------------------------------------------------------------- saving
def test_save_load_is_pickle_free_and_identical(reid_filter, splits, tmp_path):
    path = reid_filter.save(tmp_path/"flt")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) for f in files), files
    assert {"filter.json", "bank.safetensors", "encoder/config.json"} <= set(files)
    meta = json.loads((path/"filter.json").read_text())
    assert meta["threshold"] == reid_filter.threshold and meta["latent_shape"] == list(SHAPE)
    loaded = PrivacyFilter.load(path)
    x = splits[2].frames[:10]
    s0, w0 = reid_filter.scores(x)
    s1, w1 = loaded.scores(x)
    torch.testing.assert_close(s0, s1, atol=1e-6, rtol=0)
    assert w0 == w1 and loaded.threshold == reid_filter.threshold


def test_load_names_the_missing_file(reid_filter, tmp_path):
    path = reid_filter.save(tmp_path/"flt")
    (path/"bank.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="bank.safetensors"):
        PrivacyFilter.load(path)
    path = reid_filter.save(tmp_path/"flt2")
    meta = json.loads((path/"filter.json").read_text()); del meta["threshold"]
    (path/"filter.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="threshold"):
        PrivacyFilter.load(path)


def test_privacy_scores_csv(tmp_path):
    p = write_privacy_scores(tmp_path/"privacy_scores.csv", ["a.avi", "b.avi"], torch.tensor([0.5, 0.9]), ["P1", "P2"], 0.9)
    df = pd.read_csv(p)
    assert list(df.columns) == ["FileName", "Similarity", "NearestPatient", "Threshold", "Kept"]
    assert df["Kept"].tolist() == [True, False]
    with pytest.raises(ValueError, match="differ in length"):
        write_privacy_scores(tmp_path/"x.csv", ["a"], torch.tensor([0.5, 0.9]), ["P1"], 0.9)


# ---------------------------------------------------------------- the maths
def test_threshold_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    tr = F.normalize(torch.randn(40, 6, generator=g), dim=1)
    patient = torch.arange(40) % 7
    ho = F.normalize(torch.randn(15, 6, generator=g), dim=1)
    for q in (50.0, 95.0, 100.0):
        tau, per = reid_threshold(tr, patient, ho, q)
        brute = [max(float(tr[i] @ h) for i in range(40) if patient[i] == p for h in ho) for p in range(7)]
        np.testing.assert_allclose(per.numpy(), brute, atol=1e-6)
        assert tau == pytest.approx(np.percentile(brute, q), abs=1e-6)
    with pytest.raises(ValueError, match="percentile"):
        reid_threshold(tr, patient, ho, -1)
    with pytest.raises(ValueError, match="held-out"):
        reid_threshold(tr, patient, ho[:0])


def test_auc_and_roc_against_brute_force():
    g = torch.Generator().manual_seed(0)
    pos = torch.round(torch.randn(30, generator=g) * 4) / 4 + 0.5   # rounded: many ties
    neg = torch.round(torch.randn(40, generator=g) * 4) / 4
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (30 * 40)
    assert roc_auc(pos, neg) == pytest.approx(brute)
    fpr, tpr, thr = roc_curve(pos, neg)
    assert np.trapezoid(tpr, fpr) == pytest.approx(brute)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all() and (np.diff(thr) < 0).all()
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:]):   # each point is the rule 'score >= th'
        assert f == pytest.approx(float((neg >= th).float().mean())) and t == pytest.approx(float((pos >= th).float().mean()))
    assert roc_auc(torch.ones(3), torch.zeros(3)) == 1.0 and roc_auc(torch.zeros(3), torch.ones(3)) == 0.0
    with pytest.raises(ValueError):
        roc_auc(torch.ones(3), torch.zeros(0))


def test_supcon_matches_loop_and_prefers_clusters():
    g = torch.Generator().manual_seed(0)
    e = F.normalize(torch.randn(9, 5, generator=g), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
    t = 0.3
    total, n = 0.0, 0
    for i in range(9):
        pos = [p for p in range(9) if p != i and y[p] == y[i]]
        if not pos: continue
        denom = sum(math.exp(float(e[i] @ e[a]) / t) for a in range(9) if a != i)
        total += -sum(float(e[i] @ e[p]) / t - math.log(denom) for p in pos) / len(pos); n += 1
    assert float(supcon_loss(e, y, t)) == pytest.approx(total / n, rel=1e-5)
    clustered = F.normalize(torch.eye(4)[y] + 0.01 * torch.randn(9, 4, generator=g), dim=1)
    assert supcon_loss(clustered, y, t) < supcon_loss(e[:, :4], y, t)
    with pytest.raises(ValueError, match="no positive pairs"):
        supcon_loss(e[:3], torch.tensor([0, 1, 2]))


def test_encoder_gain_offset_invariant_and_saves(tmp_path):
    enc = ReIDEncoder(in_channels=4, embed_dim=8, widths=(8, 16))
    x = torch.randn(3, 4, 14, 14)
    torch.testing.assert_close(enc(0.7 * x + 2.0), enc(x), atol=1e-4, rtol=0)
    enc.save_pretrained(tmp_path/"e")
    again = ReIDEncoder.from_pretrained(tmp_path/"e")
    torch.testing.assert_close(again(x), enc(x))


def test_ensemble_trains_members_apart_and_round_trips(splits, tmp_path):
    torch.set_num_threads(1)
    train, val, test = splits
    cfg = load_preset("smoke", {"reid.steps": 30, "reid.width": 8, "reid.embed_dim": 8, "reid.members": 2})
    res = train_reid(train, cfg, out_dir=tmp_path/"training")
    enc = res.ema
    assert enc.config.members == 2 and enc.embedding_dim == 16
    assert (tmp_path/"training"/"member0"/"checkpoint").is_dir() and (tmp_path/"training"/"member1"/"checkpoint").is_dir()
    assert {h["member"] for h in res.history} == {0, 1}
    # each member is the encoder a single training with that seed makes
    single = train_reid(train, load_preset("smoke", {"reid.steps": 30, "reid.width": 8, "reid.embed_dim": 8}), seed=1).ema
    x = test.frames[:6]
    torch.testing.assert_close(enc.nets[1](x), single(x), atol=1e-5, rtol=0)
    assert not torch.allclose(enc.nets[0](x), enc.nets[1](x), atol=1e-3)   # different seeds, different members
    # the ensemble similarity is the members' mean similarity, and the filter saves and loads it unchanged
    e = embed(enc, x)
    mean_sim = torch.stack([embed(m, x) @ embed(m, x).T for m in enc.nets]).mean(0)
    torch.testing.assert_close(e @ e.T, mean_sim, atol=1e-5, rtol=0)
    flt = PrivacyFilter.build(enc, train, val, percentile=95.0)
    loaded = PrivacyFilter.load(flt.save(tmp_path/"flt"))
    torch.testing.assert_close(loaded.scores(x)[0], flt.scores(x)[0], atol=1e-6, rtol=0)
    assert loaded.encoder.config.members == 2
    with pytest.raises(ValueError, match="members"):
        train_reid(train, load_preset("smoke", {"reid.members": 0}))


def test_batches_pair_patients_across_videos():
    data = toy_patients(n_patients=6, videos=3, frames=5)
    for twins, views in ((False, 3), (True, 6)):
        batches = list(PatientBatches(data, batch_size=2 * views, views=views, twins=twins, augment=False))
        assert len(batches) == 50
        for batch in batches[:10]:
            assert sorted(torch.bincount(batch["patient"], minlength=6).tolist(), reverse=True)[:2] == [views, views]
            torch.testing.assert_close(batch["latents"], data.frames[batch["source"]])
            for p in batch["patient"].unique():
                src = batch["source"][batch["patient"] == p]
                if twins:  # each frame twice, side by side
                    assert torch.equal(src[0::2], src[1::2]); src = src[0::2]
                # with as many videos as distinct frames, each frame comes from another video
                assert len({int(data.video[i]) for i in src}) == 3
    with pytest.raises(ValueError, match="views"):
        PatientBatches(data, views=1)
    with pytest.raises(ValueError, match="even"):
        PatientBatches(data, views=3, twins=True)


def test_perturbations_do_what_they_say():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, *SHAPE, generator=g)
    assert torch.equal(perturb(x, "exact", g), x)
    n = perturb(x, "noise", g, noise_std=0.1)
    assert 0.08 < float((n - x).std()) < 0.12
    s = perturb(x, "shift", g, shift=1)
    for i in range(20):  # each copy is x moved by exactly one latent pixel along one or both axes
        assert any(torch.equal(s[i], shift_latents(x[i], dy, dx)) for dy in (-1, 0, 1) for dx in (-1, 1))
    gn = perturb(x, "gain", g)
    ratio = (gn / x).flatten(1).median(1).values
    assert bool(((ratio >= 0.8) & (ratio <= 0.9) | (ratio >= 1.125) & (ratio <= 1.25)).all())
    with pytest.raises(ValueError, match="needs a vae"):
        perturb(x, "vae_round_trip", g)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(x, "blur", g)
    codec = PooledCodec(4).fit(torch.rand(4, 1, 32, 32) * 2 - 1)
    rt = perturb(x, "vae_round_trip", g, vae=codec)
    assert rt.shape == x.shape and not torch.equal(rt, x)


def test_round_trip_through_a_real_vae():
    from echoflow.privacy import CacheCodec
    from echoflow.vae import build_vae
    vae = build_vae(load_preset("smoke"))
    codec = CacheCodec(vae, {"mean": [0.1, 0.0, -0.1, 0.2], "std": [1.0, 2.0, 0.5, 1.0]})
    z = torch.randn(3, *SHAPE)
    rt = round_trip(codec, z)
    assert rt.shape == z.shape and torch.isfinite(rt).all()
    frames = codec.decode(z)
    assert frames.shape == (3, 1, 32, 32) and frames.abs().max() <= 1


def test_audit_reports_and_writes(reid_filter, splits, tmp_path):
    train, val, test = splits
    codec_like = lambda z: z + 0.01   # a callable round trip
    rep = audit(reid_filter, train, test, torch.randn(30, *SHAPE), vae=codec_like, n_planted=25, out_dir=tmp_path)
    assert rep["perturbations"] == list(PERTURBATIONS) and rep["skipped"] == []
    assert set(rep["planted_caught_by_type"]) == set(PERTURBATIONS)
    assert rep["planted_caught"] == min(rep["planted_caught_by_type"].values())
    saved = json.loads((tmp_path/"audit.json").read_text())
    assert saved["planted_caught_by_type"] == rep["planted_caught_by_type"]
    assert sum(saved["histograms"]["exact"]) == 25 and sum(saved["histograms"]["heldout"]) == len(test)
    assert all(sum(saved["histograms_planted"][k]) == 25 for k in PERTURBATIONS)
    assert (tmp_path/"audit.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="train_latents"):
        audit(reid_filter, torch.zeros(3, 4, 6, 6), test, test)
    with pytest.raises(ValueError, match="n_planted"):
        audit(reid_filter, train, test, test, n_planted=0)


def test_a_useless_filter_fails_the_audit(trained, splits):
    "An encoder that cannot tell patients apart must not look good: a threshold of 1 catches no perturbed copy."
    train, _, test = splits
    lax = PrivacyFilter(trained, embed(trained, train.frames), train.patient, train.patient_ids, 1.0, SHAPE)
    rep = audit(lax, train, test, test, n_planted=20)
    assert rep["planted_caught_by_type"]["noise"] < 0.5 and rep["false_reject"] == 0.0


# ---------------------------------------------------------------- the cache and the stage
def write_cache(root, data: LatentFrames, split_of: dict):
    (root/"latents").mkdir(parents=True)
    mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 1.0, 0.5, 3.0])
    rows = []
    for v, name in enumerate(data.video_names):
        idx = data.video == v
        raw = data.frames[idx] * std[:, None, None] + mean[:, None, None]
        save_file({"mean": raw.contiguous()}, str(root/"latents"/f"{name}.safetensors"))
        pid = data.patient_ids[int(data.patient[idx][0])]
        rows.append({"FileName": name + ".avi", "PatientID": pid, "Split": split_of[pid]})
    pd.DataFrame(rows).to_csv(root/"FileList.csv", index=False)
    (root/"scaling.json").write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist()}))


def test_read_latent_cache_round_trip(tmp_path):
    data = toy_patients(n_patients=5)
    split_of = {p: ("TRAIN" if i < 3 else "VAL" if i < 4 else "TEST") for i, p in enumerate(data.patient_ids)}
    write_cache(tmp_path, data, split_of)
    cache = read_latent_cache(tmp_path)
    assert cache["TRAIN"].patient_ids == data.patient_ids[:3]
    torch.testing.assert_close(cache["TRAIN"].frames, data.of_patients(data.patient_ids[:3]).frames, atol=1e-5, rtol=0)
    df = pd.read_csv(tmp_path/"FileList.csv").drop(columns="PatientID")
    df.to_csv(tmp_path/"FileList.csv", index=False)
    with pytest.raises(ValueError, match="PatientID"):
        read_latent_cache(tmp_path)


def test_read_latent_cache_identity_is_patient_in_view(tmp_path):
    data = toy_patients(n_patients=2)
    write_cache(tmp_path, data, {p: "TRAIN" for p in data.patient_ids})
    df = pd.read_csv(tmp_path/"FileList.csv")
    df["View"] = ["A4C", "PSAX"] * (len(df) // 2)
    df.to_csv(tmp_path/"FileList.csv", index=False)
    assert read_latent_cache(tmp_path)["TRAIN"].patient_ids == ["P00/A4C", "P00/PSAX", "P01/A4C", "P01/PSAX"]
    df["View"] = "A4C"
    df.to_csv(tmp_path/"FileList.csv", index=False)
    assert read_latent_cache(tmp_path)["TRAIN"].patient_ids == ["P00", "P01"]


def test_read_latent_cache_names_missing_files(tmp_path):
    data = toy_patients(n_patients=3)
    write_cache(tmp_path, data, {p: "TRAIN" for p in data.patient_ids})
    (tmp_path/"latents"/f"{data.video_names[0]}.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=data.video_names[0]):
        read_latent_cache(tmp_path)
    (tmp_path/"scaling.json").unlink()
    with pytest.raises(FileNotFoundError, match="scaling.json"):
        read_latent_cache(tmp_path)


@pytest.mark.slow
def test_stage_notebook_on_a_latent_cache(tmp_path):
    "The reid stage, run by papermill on a latent cache, writes the filter folder, reid.json and metrics.json."
    import papermill as pm
    data = toy_patients(n_patients=24)
    split_of = {p: ("TRAIN" if i < 14 else "VAL" if i < 19 else "TEST") for i, p in enumerate(data.patient_ids)}
    write_cache(tmp_path/"latents", data, split_of)
    out = tmp_path/"reid"
    pm.execute_notebook(str(ROOT/"nbs"/"40_privacy.ipynb"), str(tmp_path/"run.ipynb"), cwd=str(ROOT/"nbs"), progress_bar=False,
                        parameters={"preset": "smoke", "overrides": {"reid.steps": 80}, "out_dir": str(out),
                                    "latents_dir": str(tmp_path/"latents")}, kernel_name="python3")
    metrics = json.loads((out/"metrics.json").read_text())
    for key in ("auc", "planted_caught", "planted_caught_by_type", "false_reject", "threshold"):
        assert key in metrics
    assert metrics["planted_caught_by_type"]["exact"] == 1.0 and "vae_round_trip" not in metrics["planted_caught_by_type"]
    reid = json.loads((out/"reid.json").read_text())
    assert reid["threshold"] == metrics["threshold"]
    flt = PrivacyFilter.load(out/"model")
    assert flt.threshold == metrics["threshold"] and flt.latent_shape == SHAPE
    assert (out/"audit.png").exists() and (out/"audit.json").exists()
