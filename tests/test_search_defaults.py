"""The optimizer's default training amounts are bounded in compute (MAC-samples)."""

from __future__ import annotations

from torchslim.search.defaults import (
    PROBE_MAC_SAMPLES,
    RECOVERY_MAC_SAMPLES,
    training_defaults,
)


def test_small_tasks_keep_epoch_based_defaults():
    # mnist1d-cnn: 150 epochs, 31,750 MACs, 3,600 training samples, 37 points
    small = training_defaults(150, 31_750, 3_600, 37)
    assert (small.recovery_epochs, small.sensitivity_epochs, small.capped) == (20, 1, False)
    assert (small.verifications, small.study_trials) == (12, 30)
    assert small.epoch_mac_samples == 31_750 * 3_600
    assert "bounded" not in small.note()
    # 8 epochs, 416,520 MACs x 10,000 samples = 4.2e9 per epoch: 30 points = 1.25e11 fit
    medium = training_defaults(8, 416_520, 10_000, 30)
    assert (medium.recovery_epochs, medium.sensitivity_epochs) == (4, 1)


def test_large_tasks_recover_less_and_probe_without_recovery():
    # fashion-resnet: 4 epochs, 2,364,864 MACs x 55,000 = 1.3e11 per epoch; 37 points
    big = training_defaults(4, 2_364_864, 55_000, 37)
    assert big.epoch_mac_samples == 2_364_864 * 55_000 > RECOVERY_MAC_SAMPLES
    assert 37 * big.epoch_mac_samples > PROBE_MAC_SAMPLES
    assert (big.recovery_epochs, big.sensitivity_epochs, big.capped) == (1, 0, True)
    assert "--recovery-epochs" in big.note()
    # 1e12 MAC-samples of recoveries hold 7 one-epoch recoveries of 1.3e11; a study 18 trials
    assert (big.verifications, big.study_trials) == (7, 18)
    # fashion-lenet5: 8 epochs, 416,520 x 55,000 = 2.29e10: 8e10 holds 3 whole epochs of 4
    lenet = training_defaults(8, 416_520, 55_000, 30)
    assert (lenet.recovery_epochs, lenet.sensitivity_epochs, lenet.capped) == (3, 0, True)


def test_recovery_never_below_one_epoch_and_bound_scales():
    huge = training_defaults(40, 10**9, 10**6, 5)  # one epoch is 1e15 MAC-samples
    assert huge.recovery_epochs == 1 and huge.sensitivity_epochs == 0
    assert (huge.verifications, huge.study_trials) == (4, 10)  # the floors
    # 20 wanted epochs, 4e9 per epoch: 8e10 / 4e9 = 20 fit exactly
    edge = training_defaults(40, 4_000, 1_000_000, 10)
    assert edge.recovery_epochs == 20
    # one more MAC per sample and only 19 whole epochs fit
    assert training_defaults(40, 4_211, 1_000_000, 10).recovery_epochs == 18
