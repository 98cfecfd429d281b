"""The optimizer's default training amounts, bounded in compute so a default run ends.

A search trains twice: once per sensitivity point (a short recovery before the point is
measured) and once per verified candidate (the recipe's recovery). Counted in epochs,
that cost grows with the data and the model: with epoch-based defaults,
``torchslim optimize fashion-resnet --objective latency --runtime onnxruntime`` (55 k
training images, 2.4 M MACs each) had no answer after 36 minutes on 2 cores. So the defaults are
bounded in **MAC-samples**: the baseline's forward MACs per sample times the samples
trained on (one epoch = MACs x training samples).

- Recovery: half the task's training epochs (1 to 20), and no more whole epochs than fit
  in :data:`RECOVERY_MAC_SAMPLES` (at least one epoch).
- Sensitivity: each point recovers one epoch when all points together fit in
  :data:`PROBE_MAC_SAMPLES`; otherwise points are measured right after compressing and
  their cost is predicted from the loss (what ``--sensitivity-epochs 0`` does).
- Verifications (greedy) / trials (Optuna): 12 / 30, fewer when the recoveries would not
  fit in :data:`SEARCH_MAC_SAMPLES` (at least 4 / 10).
- Time: without ``--trials`` and ``--time-limit`` the search starts no new verification
  after :data:`DEFAULT_TIME_LIMIT` seconds from the start (a safety net for slow or busy
  machines; the answer is the best candidate verified by then).

Built-in tasks (recovery epochs, epoch-based value in brackets; probe epochs): mnist1d-cnn
and digits-mlp 20 (20), 1 -- unchanged; digits32-vgg 1 (7), 0; digits32-resnet 5 (10), 0;
digits32-mobilenet 4 (10), 0; fashion-resnet 1 (2), 0; fashion-lenet5 3 (4), 0. What a user trades: on large tasks recovery sees about one epoch,
so a longer search (``--recovery-epochs``, ``--sensitivity-epochs``) may find a more
compressed model within the same budget. Explicit values are never capped.
"""

from __future__ import annotations

from dataclasses import dataclass

RECOVERY_MAC_SAMPLES = 8e10
"""Compute of one verification's recovery (forward MACs x samples): three epochs of
fashion-lenet5 (55 k images x 0.42 M MACs = 2.3e10 each), five of digits32-resnet."""
SEARCH_MAC_SAMPLES = 1e12
"""Compute of all verifications' recoveries together: 7 one-epoch recoveries of
fashion-resnet (1.3e11 each), 4 of digits32-vgg (2.5e11)."""
DEFAULT_TIME_LIMIT = 1500.0
"""Seconds after which a search given neither trials nor a time limit starts no new
verification (25 minutes, so a default run answers within 30 on 2 cores)."""
PROBE_MAC_SAMPLES = 4e11
"""Compute of all sensitivity points' recovery together: mnist1d-cnn (1.1e8 per epoch)
fits thousands of points, fashion-lenet5 (2.3e10) 17, fashion-resnet (1.3e11) 3."""


@dataclass(frozen=True)
class TrainingDefaults:
    """Epochs the optimizer trains by default, and why.

    Attributes:
        recovery_epochs: recovery of each verified candidate.
        sensitivity_epochs: recovery before each sensitivity point.
        verifications: greedy verifications (Optuna: :attr:`study_trials`).
        epoch_mac_samples: forward MACs of one training epoch of the baseline.
        capped: the compute bound lowered a value (the notes say so).
    """

    recovery_epochs: int
    sensitivity_epochs: int
    epoch_mac_samples: float
    capped: bool
    verifications: int = 12

    def scaled_trials(self, trials: int) -> int:
        """A strategy's default trial count (greedy 12, Optuna 30) scaled like the
        verifications (12 -> :attr:`verifications`)."""
        return max(1, round(trials * self.verifications / 12))

    @property
    def study_trials(self) -> int:
        """Default finished trials of an Optuna study (30, scaled like the verifications)."""
        return self.scaled_trials(30)

    def note(self) -> str:
        """One line for the report's notes."""
        text = (
            f"default training: one epoch = {self.epoch_mac_samples:.2g} MAC-samples; "
            f"recovery {self.recovery_epochs} epoch(s), sensitivity points after "
            f"{self.sensitivity_epochs} epoch(s), {self.verifications} greedy verifications "
            f"({self.study_trials} study trials)"
        )
        if self.capped:
            text += (
                " (bounded in compute so the default search ends; pass --recovery-epochs / "
                "--sensitivity-epochs / --trials for a longer search)"
            )
        return text


def training_defaults(
    task_epochs: int, macs_per_sample: int, train_samples: int, points: int
) -> TrainingDefaults:
    """The default recovery and sensitivity epochs of a search.

    Args:
        task_epochs: the task's own training epochs.
        macs_per_sample: the baseline's forward MACs for one sample.
        train_samples: samples in the training split.
        points: sensitivity points the search measures (grid values past the identity).
    """
    epoch = float(macs_per_sample) * float(train_samples)
    wanted = min(20, max(1, task_epochs // 2))
    fit = int(RECOVERY_MAC_SAMPLES // epoch) if epoch > 0 else wanted
    recovery = max(1, min(wanted, fit))
    probe = 1 if epoch * max(points, 1) <= PROBE_MAC_SAMPLES else 0
    per_verification = recovery * epoch
    verifications = (
        12
        if per_verification <= 0
        else max(4, min(12, int(SEARCH_MAC_SAMPLES // per_verification)))
    )
    capped = recovery < wanted or probe == 0 or verifications < 12
    return TrainingDefaults(recovery, probe, epoch, capped, verifications)
