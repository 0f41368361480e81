"Core helpers: presets, atomic files, model files, videos, echo measurements (bad input included)."
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from echoflow.core import (PRESET_DIR, EchoVideo, atomic_dir, atomic_write, ejection_fraction, load_preset,
                           lv_volume, mask_from_tracings, preset_names, read_video, seed_everything,
                           tracings_from_mask, volume_from_tracings, write_video)


# ---------------------------------------------------------------- presets
def test_every_shipped_preset_validates():
    assert {"smoke", "default", "small", "paper"} <= set(preset_names())
    sizes = [load_preset(n)["data"]["size"] for n in ("smoke", "default", "small", "paper")]
    assert sizes == [32, 64, 112, 112]


def test_preset_unknown_key_names_key_and_file(tmp_path):
    data = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text())
    data["vae"]["kl_wieght"] = data["vae"].pop("kl_weight")
    p = tmp_path / "mine.yaml"; p.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as e: load_preset(p)
    assert "vae.kl_wieght" in str(e.value) and "mine.yaml" in str(e.value)


def test_preset_wrong_type_names_key_and_file(tmp_path):
    data = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text())
    data["vae"]["batch_size"] = "sixteen"
    p = tmp_path / "mine.yaml"; p.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as e: load_preset(p)
    assert "vae.batch_size" in str(e.value) and "should be int" in str(e.value) and "mine.yaml" in str(e.value)


def test_preset_missing_key_and_bool_is_not_int(tmp_path):
    data = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text())
    del data["lvfm"]["frames"]
    p = tmp_path / "missing.yaml"; p.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="missing key 'lvfm.frames'"): load_preset(p)
    data = yaml.safe_load((PRESET_DIR / "smoke.yaml").read_text()); data["data"]["frames"] = True
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="data.frames"): load_preset(p)


def test_preset_overrides_are_validated():
    assert load_preset("smoke", {"lvfm.lr": 1})["lvfm"]["lr"] == 1.0  # int accepted for float
    with pytest.raises(ValueError, match="override 'vae.nope'"): load_preset("smoke", {"vae.nope": 1})
    with pytest.raises(ValueError, match="override 'vae.steps'"): load_preset("smoke", {"vae.steps": 1.5})
    with pytest.raises(ValueError, match="unknown preset"): load_preset("gigantic")


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_killed_midway_keeps_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    with atomic_write(target) as f: f.write('{"old": 1}')
    script = textwrap.dedent(f"""
        import os, time
        from echoflow.core import atomic_write
        with atomic_write({str(target)!r}) as f:
            f.write('{{"new": ' + 'x' * 100000); f.flush()
            print('writing', flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert target.read_text() == '{"old": 1}'
    leftovers = [p for p in tmp_path.iterdir() if p.name != "metrics.json"]
    assert leftovers, "the killed writer's temporary should exist until the next write"
    with atomic_write(target) as f: f.write('{"newer": 2}')
    assert target.read_text() == '{"newer": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "stale temporary not cleaned"


def test_atomic_write_exception_leaves_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "wb") as f:
            f.write(b"partial"); raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "a"): pass


def test_atomic_dir_replaces_only_on_success(tmp_path):
    with atomic_dir(tmp_path / "ds") as d: (d / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ds") as d:
            (d / "b").write_text("2"); raise RuntimeError("stage failed")
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["a"]
    with atomic_dir(tmp_path / "ds") as d: (d / "c").write_text("3")
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ---------------------------------------------------------------- seeding
def test_seed_everything_repeats():
    seed_everything(7); a = (np.random.rand(3), torch.rand(3))
    seed_everything(7); b = (np.random.rand(3), torch.rand(3))
    assert np.allclose(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError): seed_everything("7")


# ---------------------------------------------------------------- videos
@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    frames = np.clip(rng.normal(100, 10, (10, 34, 40)), 0, 255).astype(np.uint8)
    frames[:, 10:20, 10:30] = 220
    back, fps = read_video(write_video(tmp_path / f"v{suffix}", frames, fps=49.5))
    assert back.shape == frames.shape and abs(fps - 49.5) < 1e-6
    assert np.abs(back.astype(int) - frames).mean() < 5


def test_avi_is_three_channel_mjpg(tmp_path):
    import av
    write_video(tmp_path / "v.avi", np.zeros((3, 16, 16), np.uint8), fps=30)
    with av.open(str(tmp_path / "v.avi")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "mjpeg" and (s.width, s.height) == (16, 16)


def test_video_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.avi"): read_video(tmp_path / "nope.avi")
    (tmp_path / "bad.avi").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="bad.avi"): read_video(tmp_path / "bad.avi")
    with pytest.raises(ValueError, match="suffix"): write_video(tmp_path / "v.mov", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="fps"): write_video(tmp_path / "v.avi", np.zeros((2, 8, 8), np.uint8), fps=0)
    assert not (tmp_path / "v.avi").exists()


# ---------------------------------------------------------------- echo records and geometry
def _ellipse(a, b, angle=0.0, size=112, centre=(56, 56)):
    yy, xx = np.mgrid[:size, :size].astype(float)
    yy, xx = yy - centre[0] + 0.5, xx - centre[1] + 0.5
    c, s = np.cos(angle), np.sin(angle)
    return ((c * yy + s * xx) / a) ** 2 + ((-s * yy + c * xx) / b) ** 2 <= 1


@pytest.mark.parametrize("angle", [0.0, 0.3, -0.6])
def test_method_of_disks_on_ellipsoids(angle):
    for a, b in [(40, 20), (30, 14)]:
        assert abs(lv_volume(_ellipse(a, b, angle)) / (4 / 3 * np.pi * a * b * b) - 1) < 0.03


def test_ef_from_masks_and_tracings_round_trip():
    ed, es = _ellipse(42, 20, 0.2), _ellipse(36, 14, 0.2)
    truth = 100 * (1 - 36 * 14**2 / (42 * 20**2))
    assert abs(ejection_fraction(lv_volume(ed), lv_volume(es)) - truth) < 1.5
    for m in (ed, es):
        tr = tracings_from_mask(m)
        assert tr.shape == (21, 4)
        assert abs(volume_from_tracings(tr) - lv_volume(m)) < 1e-6
        assert (mask_from_tracings(tr, m.shape) ^ m).sum() / m.sum() < 0.05


def test_geometry_bad_input():
    with pytest.raises(ValueError, match="empty"): lv_volume(np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="2-D"): tracings_from_mask(np.ones((2, 5, 5), bool))
    with pytest.raises(ValueError, match="tracings"): volume_from_tracings(np.zeros((21, 3)))
    with pytest.raises(ValueError, match="EDV"): ejection_fraction(-1, 3)


def test_echo_video_validates():
    frames = np.zeros((4, 8, 8), np.uint8)
    EchoVideo("ok", frames, 30.0, 55.0, "P1")
    with pytest.raises(ValueError, match="EF"): EchoVideo("v1", frames, 30.0, 120.0, "P1")
    with pytest.raises(ValueError, match="view"): EchoVideo("v1", frames, 30.0, 50.0, "P1", view="A5C")
    with pytest.raises(ValueError, match="uint8"): EchoVideo("v1", frames.astype(float), 30.0, 50.0, "P1")
    with pytest.raises(ValueError, match="lv_masks"): EchoVideo("v1", frames, 30.0, 50.0, "P1", lv_masks=np.zeros((3, 8, 8), bool))
