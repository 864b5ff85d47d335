"""Training-time augmentation and regularisation settings reach the data and the model."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from conftest import ROOT
from train import hyperparameters as H
from train import model as model_source
from train.data import (REVERB_DRR_DB, REVERB_RT60_S, VOICE_FORMANT_RATIO, VOICE_PITCH_HZ, Examples, Ragged,
                        SpeechDataset, Strings, change_voice, reverberate, speed_perturb)

RATE = 16_000


def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.sin(2 * np.pi * hz * t).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[spectrum.argmax()])


def test_speed_perturb_changes_tempo_and_pitch_together():
    x = _tone(2.0)
    fast = speed_perturb(x, 1.1)
    assert abs(len(fast) - len(x) / 1.1) <= 2
    assert fast.dtype == np.float32
    assert _peak_hz(fast) == pytest.approx(440 * 1.1, abs=2)
    assert speed_perturb(x, 1.0) is x


def test_reverberate_keeps_the_direct_path_and_adds_a_decaying_tail_at_the_asked_ratio():
    x = np.zeros(RATE, dtype=np.float32)
    x[100] = 1.0  # an impulse: the output is the room's impulse response
    noise = np.random.default_rng(0).standard_normal(RATE)
    y = reverberate(x, 0.5, 10.0, noise)
    assert y.dtype == np.float32 and len(y) == len(x)
    assert np.abs(y[:100]).max() < 1e-6 and y[100] == pytest.approx(1.0, abs=1e-6)
    tail = y[101:101 + RATE // 2].astype(np.float64)
    assert np.sum(tail ** 2) == pytest.approx(0.1, rel=1e-3)  # 10 dB below the direct path's energy of 1
    early, late = np.sum(tail[:1600] ** 2), np.sum(tail[4000:5600] ** 2)  # 0-0.1 s and 0.25-0.35 s
    assert late < early / 100  # 60 dB per 0.5 s: the 0.25 s apart windows differ by ~30 dB
    speech = _tone(1.0)
    assert len(reverberate(speech, 0.8, 5.0, noise)) == len(speech)


def test_dataset_reverberates_the_asked_fraction_of_draws_renormalised():
    x = _tone(1.0)
    x = (x - x.mean()) / x.std()
    ds = _dataset(x, [1, 2], reverberation=0.5)
    torch.manual_seed(0)
    draws = [ds[0]["input_values"] for _ in range(200)]
    changed = [d for d in draws if d is not x]
    assert 70 <= len(changed) <= 130  # about half of 200 (binomial sd ~7)
    assert all(len(d) == len(x) and abs(d.mean()) < 1e-3 and abs(d.std() - 1) < 1e-3 for d in changed)
    assert all(not np.allclose(d, x, atol=1e-2) for d in changed)
    evaluation = _dataset(x, [1, 2], reverberation=1.0, train=False)
    assert evaluation[0]["input_values"] is x  # never at evaluation


def test_the_reverberation_help_states_the_ranges_the_data_step_draws_from():
    help_text = H.Hyperparameters.__dataclass_fields__["reverberation"].metadata["help"]
    assert "%g-%g s" % REVERB_RT60_S in help_text and "%g-%g dB" % REVERB_DRR_DB in help_text


def _dataset(x: np.ndarray, labels: list[int], speed_perturbation: float = 0.0, reverberation: float = 0.0,
             train: bool = True, voice_perturbation: float = 0.0, augmentation_start_step: int = 0) -> SpeechDataset:
    """A one-item dataset whose audio is `x` (already 16 kHz), as if read from a channel."""
    audio = types.SimpleNamespace(load=lambda i: x, normalized=True)
    ix = types.SimpleNamespace(name="train", audio=audio, names=["x.wav"])
    examples = Examples(ix, np.array([0]), Ragged.from_lists([labels]), np.array([len(x)]), Strings(["ab"]))
    return SpeechDataset(examples, train=train, speed_perturbation=speed_perturbation, reverberation=reverberation,
                         voice_perturbation=voice_perturbation, augmentation_start_step=augmentation_start_step)


def test_voices_and_rooms_start_at_the_asked_step_in_running_dataloader_workers():
    """augmentation_start_step: the callback's step reaches a persistent worker that is already running (the
    DataLoader the Trainer builds), and only voices and rooms wait for it."""
    from train.callbacks import AugmentationStartCallback

    x = _tone(1.0)
    x = (x - x.mean()) / x.std()
    ds = _dataset(x, [1, 2], reverberation=1.0, speed_perturbation=0.0, augmentation_start_step=3)
    callback, state = AugmentationStartCallback(ds), types.SimpleNamespace(global_step=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=[0] * 12, num_workers=1, prefetch_factor=1,
                                         persistent_workers=True, multiprocessing_context="fork")
    callback.on_train_begin(None, state, None)
    reverberated = []
    for step, item in enumerate(loader, start=1):
        reverberated.append(not np.array_equal(item["input_values"], x))
        state.global_step = step
        callback.on_step_end(None, state, None)
    # Steps 1-3 drew before step 3 ended; the worker reads at most one item ahead (prefetch_factor 1).
    assert reverberated[:3] == [False] * 3 and all(reverberated[5:]), reverberated
    assert _dataset(x, [1, 2], reverberation=1.0).step is None  # 0: no shared step, from the start
    resumed = types.SimpleNamespace(global_step=7)
    callback.on_train_begin(None, resumed, None)
    assert ds.step.value == 7  # a resumed job starts where it stopped


def test_dataset_draws_a_new_factor_each_time_within_range_and_seeded():
    x = _tone(1.0)
    ds = _dataset(x, [1, 2], speed_perturbation=0.2)
    torch.manual_seed(0)
    first = [len(ds[0]["input_values"]) for _ in range(20)]
    torch.manual_seed(0)
    again = [len(ds[0]["input_values"]) for _ in range(20)]
    assert first == again
    assert len(set(first)) > 10
    assert all(len(x) / 1.2 - 2 <= n <= len(x) / 0.8 + 2 for n in first)
    assert ds[0]["labels"].tolist() == [1, 2]
    plain = _dataset(x, [1, 2])
    assert plain[0]["input_values"] is x
    assert ds.lengths == plain.lengths  # batches are grouped by the unperturbed length


def test_regularisation_hyperparameters_reach_the_model_config():
    hp = H.parse({"hidden_dropout": "0.1", "attention_dropout": "\"0.05\"", "activation_dropout": "0.02",
                  "feat_proj_dropout": "0.03", "final_dropout": "0.04", "mask_feature_prob": "0.1",
                  "mask_time_prob": "0.2", "layerdrop": "0.1"})
    vocab = {c: i for i, c in enumerate("abc|")} | {"[UNK]": 4, "[PAD]": 5}
    model, pretrained = model_source.load(str(ROOT / "local_test" / "tiny_model"), hp, vocab, len(vocab), 5, log=lambda *_: None)
    c = model.config
    assert (c.hidden_dropout, c.attention_dropout, c.activation_dropout, c.feat_proj_dropout, c.final_dropout) == \
        (0.1, 0.05, 0.02, 0.03, 0.04)
    assert (c.mask_feature_prob, c.mask_time_prob, c.layerdrop) == (0.1, 0.2, 0.1)
    assert not pretrained


@pytest.mark.parametrize("name,value", [("speed_perturbation", "0.5"), ("hidden_dropout", "1.0"),
                                        ("mask_feature_prob", "-0.1"), ("reverberation", "1.5"),
                                        ("voice_perturbation", "1.01"), ("voice_perturbation", "-0.5")])
def test_out_of_range_values_fail_naming_the_hyperparameter(name, value):
    with pytest.raises(Exception) as e:
        H.parse({name: value})
    assert name in str(e.value).splitlines()[0]


def _voiced(seconds: float, f0: float, formants=(700.0, 1200.0, 2600.0)) -> np.ndarray:
    """A vowel-like sound: a glottal pulse train at `f0` Hz through resonators at `formants` (Hz), 16 kHz."""
    n = int(seconds * RATE)
    y = np.zeros(n)
    y[(np.arange(0, seconds, 1 / f0) * RATE).astype(int)] = 1.0
    r = np.exp(-np.pi * 80 / RATE)  # 80 Hz bandwidth
    for f in formants:  # a two-pole resonator per formant
        a1, a2 = 2 * r * np.cos(2 * np.pi * f / RATE), -r * r
        out, p1, p2 = np.empty(n), 0.0, 0.0
        for i in range(n):
            p1, p2 = y[i] + a1 * p1 + a2 * p2, p1
            out[i] = p1
        y = out
    return (y / np.abs(y).max() * 0.5).astype(np.float32)


def _median_f0(x: np.ndarray) -> float:
    import parselmouth
    from parselmouth.praat import call

    pitch = call(parselmouth.Sound(x.astype(np.float64), sampling_frequency=RATE), "To Pitch", 0.0, 75, 600)
    return call(pitch, "Get quantile", 0, 0, 0.5, "Hertz")


def _centroid_hz(x: np.ndarray) -> float:
    """Spectral centroid: moves with the formants, not with the pitch (harmonics sample the same envelope)."""
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    return float(np.sum(np.fft.rfftfreq(len(x), 1 / RATE) * spectrum) / np.sum(spectrum))


def test_change_voice_moves_the_pitch_and_keeps_the_formants_and_duration():
    x = _voiced(1.0, 110.0)
    y = change_voice(x, 220.0, 1.0)
    assert y.dtype == np.float32 and abs(len(y) - len(x)) <= 160  # duration kept (within 10 ms)
    assert _median_f0(x) == pytest.approx(110, rel=0.03)
    assert _median_f0(y) == pytest.approx(220, rel=0.03)
    assert _centroid_hz(y) == pytest.approx(_centroid_hz(x), rel=0.1)  # resampling would have doubled it
    assert _centroid_hz(speed_perturb(x, 1.5)) > 1.3 * _centroid_hz(x)  # what resampling does instead


def test_change_voice_scales_the_formants_at_the_same_pitch():
    x = _voiced(1.0, 120.0)
    y = change_voice(x, 120.0, 1.25)
    assert _median_f0(y) == pytest.approx(120, rel=0.03)
    assert _centroid_hz(y) == pytest.approx(1.25 * _centroid_hz(x), rel=0.08)


def test_change_voice_is_repeatable_for_a_seed():
    x = _voiced(0.5, 110.0)
    assert np.array_equal(change_voice(x, 200.0, 1.1, seed=3), change_voice(x, 200.0, 1.1, seed=3))
    assert not np.array_equal(change_voice(x, 200.0, 1.1, seed=3), change_voice(x, 200.0, 1.1, seed=4))


def test_change_voice_returns_unvoiced_audio_unchanged():
    silence = np.zeros(RATE, dtype=np.float32)
    assert change_voice(silence, 200.0, 1.1) is silence


def test_dataset_changes_the_voice_of_the_asked_fraction_of_draws_within_the_ranges():
    x = _voiced(1.0, 110.0)
    x = (x - x.mean()) / x.std()
    ds = _dataset(x, [1, 2], voice_perturbation=0.5)
    torch.manual_seed(0)
    draws = [ds[0]["input_values"] for _ in range(60)]
    changed = [d for d in draws if d is not x]
    assert 18 <= len(changed) <= 42  # about half of 60 (binomial sd ~4)
    assert all(abs(d.mean()) < 1e-3 and abs(d.std() - 1) < 1e-3 for d in changed)  # renormalised
    f0 = [_median_f0(d) for d in changed]
    assert all(VOICE_PITCH_HZ[0] * 0.95 <= f <= VOICE_PITCH_HZ[1] * 1.05 for f in f0)
    assert max(f0) / min(f0) > 1.8  # spread over the range, not one voice
    torch.manual_seed(0)
    assert all(np.array_equal(a, ds[0]["input_values"]) for a in draws[:5])  # seeded
    evaluation = _dataset(x, [1, 2], voice_perturbation=1.0, train=False)
    assert evaluation[0]["input_values"] is x  # never at evaluation


def test_the_voice_perturbation_help_states_the_ranges_the_data_step_draws_from():
    help_text = H.Hyperparameters.__dataclass_fields__["voice_perturbation"].metadata["help"]
    assert "%g-%g Hz" % VOICE_PITCH_HZ in help_text and "%g-%g" % VOICE_FORMANT_RATIO in help_text
    assert "voice_perturbation" in H.help_text() and "`voice_perturbation`" in H.markdown_table()
