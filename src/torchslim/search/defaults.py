"""The optimizer's default training amounts, bounded in compute so a default run ends.

A search trains twice: once per sensitivity point (a short recovery before the point is
measured) and once per verified candidate (the recipe's recovery). Counted in epochs,
that cost grows with the data and the model: with epoch-based defaults,
``torchslim optimize fashion-resnet --objective latency --runtime onnxruntime`` (55 k
images, 2.4 M MACs each) had no answer after 36 minutes on 2 cores. So the defaults are
bounded in **MAC-samples**: the baseline's forward MACs per sample times the samples
trained on (one epoch = MACs x training samples).

- Recovery: half the task's training epochs (1 to 20), and no more whole epochs than fit
  in :data:`RECOVERY_MAC_SAMPLES` (at least one epoch).
- Sensitivity: each point recovers one epoch when all points together fit in
  :data:`PROBE_MAC_SAMPLES`; otherwise points are measured right after compressing and
  their cost is predicted from the loss (what ``--sensitivity-epochs 0`` does).

The small built-in tasks keep the epoch-based defaults (mnist1d-cnn, digits-mlp,
digits32-resnet, fashion-lenet5); fashion-resnet and digits32-vgg get 1 recovery epoch
and no probe recovery. What a user trades: on large tasks recovery sees about one epoch,
so a longer search (``--recovery-epochs``, ``--sensitivity-epochs``) may find a more
compressed model within the same budget. Explicit values are never capped.
"""

from __future__ import annotations

from dataclasses import dataclass

RECOVERY_MAC_SAMPLES = 8e10
"""Compute of one verification's recovery (forward MACs x samples). One epoch of
fashion-resnet (27.5 k training images x 2.36 M MACs = 6.5e10) or digits32-vgg fits;
two do not."""
PROBE_MAC_SAMPLES = 4e11
"""Compute of all sensitivity points' recovery together. fashion-lenet5 (30 points x
1.15e10) fits; fashion-resnet (37 points x 6.5e10) does not."""


@dataclass(frozen=True)
class TrainingDefaults:
    """Epochs the optimizer trains by default, and why.

    Attributes:
        recovery_epochs: recovery of each verified candidate.
        sensitivity_epochs: recovery before each sensitivity point.
        epoch_mac_samples: forward MACs of one training epoch of the baseline.
        capped: the compute bound lowered a value (the notes say so).
    """

    recovery_epochs: int
    sensitivity_epochs: int
    epoch_mac_samples: float
    capped: bool

    def note(self) -> str:
        """One line for the report's notes."""
        text = (
            f"default training: one epoch = {self.epoch_mac_samples:.2g} MAC-samples; "
            f"recovery {self.recovery_epochs} epoch(s), sensitivity points after "
            f"{self.sensitivity_epochs} epoch(s)"
        )
        if self.capped:
            text += (
                " (bounded in compute so the default search ends; pass --recovery-epochs / "
                "--sensitivity-epochs for a longer search)"
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
    return TrainingDefaults(recovery, probe, epoch, recovery < wanted or probe == 0)
