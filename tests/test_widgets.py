"Each widget driven through its objects (set a value, press a button), wired to a real (tiny, untrained) EchoFlowPipeline."
import numpy as np
import pytest
import torch

from echoflow.generator import EchoFlowPipeline, counterfactual_fn, slider_fn, tiny_pipeline
from echoflow.widgets import (CounterfactualExplorer, EFSlider, FlowStepper, RealOrSyntheticQuiz, binomial_ci,
                              lv_area_curve, render_points)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_ef_slider_regenerates_on_every_control(pipe):
    slider = EFSlider(slider_fn(pipe), measure_ef=lambda v: float(v.mean()))
    first = slider.last["video"]
    assert first.ndim == 3 and first.dtype == np.uint8
    slider.ef.value = 25
    assert slider.last["ef"] == 25 and not np.array_equal(slider.last["video"], first)
    html = slider.video.value
    slider.seed.value = 5
    assert slider.last["seed"] == 5 and slider.video.value != html
    slider.steps.value = 2
    assert slider.last["steps"] == 2 and "requested EF <b>25%</b>" in slider.info.value
    before = slider.last["video"]
    slider.button.click()                       # same settings: the same video again
    assert np.array_equal(slider.last["video"], before)


def test_counterfactual_explorer_changes_with_ef_and_observed_frames(pipe):
    videos = {f"v{i}": pipe(ef=50.0, generator=torch.Generator().manual_seed(i), output_type="np").videos[0] for i in range(2)}
    explorer = CounterfactualExplorer(videos, counterfactual_fn(pipe), efs={"v0": 50.0, "v1": 40.0})
    base = explorer.last["video"]
    assert base.shape == videos["v0"].shape
    explorer.ef.value = 80; explorer.button.click()
    assert explorer.last["ef"] == 80 and not np.array_equal(explorer.last["video"], base)
    explorer.observed.value = (0, 3, 6); explorer.button.click()
    assert explorer.last["observed"] == [0, 3, 6] and len(explorer.last["curves"]["counterfactual"]) == len(base)
    assert explorer.videos_view.value.count("<video") == 2 and explorer.curves.value[:4] == b"\x89PNG"
    explorer.choice.value = "v1"
    assert explorer.ef.value == 40.0 and explorer.observed.value == (0,)
    explorer.observed.value = ()
    with pytest.raises(ValueError, match="at least one frame"): explorer.run()


def test_quiz_records_answers_and_reports_a_binomial_interval(pipe, tmp_path):
    real = [np.full((4, 16, 16), 30 * i, np.uint8) for i in range(5)]
    synth = [pipe(ef=50.0, generator=torch.Generator().manual_seed(i), output_type="np").videos[0] for i in range(5)]
    quiz = RealOrSyntheticQuiz(real, synth, n=8, seed=2, csv_path=tmp_path / "answers.csv", rater="r1")
    truth = [s for s, _ in quiz.items]
    assert sorted(truth) == ["real"] * 4 + ["synthetic"] * 4
    for i, source in enumerate(truth):          # right on the first 6, wrong on the last 2
        wrong = "synthetic" if source == "real" else "real"
        (quiz.real_button if (source if i < 6 else wrong) == "real" else quiz.synthetic_button).click()
    s = quiz.summary()
    assert (s["correct"], s["n"]) == (6, 8) and s["ci_low"] < 0.75 < s["ci_high"]
    assert quiz.real_button.disabled and "75.0%" in quiz.result.value
    rows = (tmp_path / "answers.csv").read_text().splitlines()
    assert rows[0].startswith("rater,item,video,truth,answer,correct") and len(rows) == 9
    with pytest.raises(RuntimeError, match="finished"): quiz.answer("real")
    with pytest.raises(ValueError, match="need 4 real"): RealOrSyntheticQuiz(real[:2], synth, n=8)


def test_binomial_ci_matches_known_values():
    lo, hi = binomial_ci(57, 100)                # Clopper-Pearson, reference values from the Beta quantiles
    assert abs(lo - 0.4671) < 1e-3 and abs(hi - 0.6686) < 1e-3
    assert binomial_ci(10, 10)[1] == 1.0 and binomial_ci(0, 10)[0] == 0.0


def test_flow_stepper_on_a_latent_video_decoded_at_each_t(pipe):
    from echoflow.flow.meanflow import meanflow_sample
    from echoflow.lvfm import generate
    anatomy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    trajectories = {}
    for n in (1, 4):   # states along the sampler: generate's intermediate states via a tiny wrapper
        states = [generate(pipe.lvfm, 50.0, anatomy=anatomy, steps=k, generator=torch.Generator().manual_seed(1))
                  for k in range(1, n + 1)]
        trajectories[f"{n} step{'s' * (n > 1)}"] = torch.stack([torch.zeros_like(states[0])] + states)
    decode = lambda z, t, h, label: render_points(torch.randn(5, 2), t, torch.randn(2, 5, 2), label)
    stepper = FlowStepper(trajectories, decode, t=0.0)
    assert stepper.state()[0] == 0
    img = stepper.view.value
    stepper.steps.value = "4 steps"; stepper.t.value = 0.5
    assert stepper.state()[0] == 2 and stepper.view.value != img
    with pytest.raises(ValueError): FlowStepper({}, decode)


def test_lv_area_curve_follows_a_beating_disk():
    yy, xx = np.mgrid[:32, :32]
    radius = 6 + 2 * np.cos(np.linspace(0, 2 * np.pi, 12))
    video = np.stack([np.where((yy - 13) ** 2 + (xx - 16) ** 2 <= r * r, 10, 200) for r in radius]).astype(np.uint8)
    curve = lv_area_curve(video)
    assert np.corrcoef(curve, radius ** 2)[0, 1] > 0.95
