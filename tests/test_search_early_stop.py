"""Early stopping of hopeless candidates with the default recovery (distillation).

The watched step is the recipe's recovery step, found by its config's ``role``, not its
name: these tests use the optimizer's default recovery, ``distill``. A candidate with
99 % of the weights of an 8-32-3 MLP pruned cannot come back within a 2-point budget;
one with 50 % pruned recovers fully.
"""

from __future__ import annotations

import optuna
import pytest

from search_helpers import make_task
from torchslim.search import Budget, Objective, build_space
from torchslim.search.evaluate import Evaluator, StopTrial
from torchslim.search.optimize import optimize
from torchslim.search.optuna_search import open_storage, open_study, run_study
from torchslim.techniques.base import ApplyContext

EPOCHS = 4
GOOD = {"magnitude_pruning": {"0": 0.5, "2": 0.5}}
BAD = {"magnitude_pruning": {"0": 0.99, "2": 0.99}}


@pytest.fixture()
def epochs_trained(monkeypatch) -> dict[str, list[int]]:
    """Counts the epochs each watched training step really trained (by step name)."""
    seen: dict[str, list[int]] = {}
    original = ApplyContext.epoch_hook

    def counting(self, config):
        hook = original(self, config)
        if hook is None:
            return None

        def after_epoch(model, epoch):
            seen.setdefault(config.name, []).append(epoch)
            hook(model, epoch)

        return after_epoch

    monkeypatch.setattr(ApplyContext, "epoch_hook", counting)
    return seen


def _evaluator(recovery: str = "distill") -> Evaluator:
    task = make_task()
    base = task.baseline(progress=False)
    space = build_space(base, task, ["magnitude_pruning"], {"magnitude_pruning": [0, 0.5, 0.99]})
    return Evaluator(
        task, base, space, Budget(2.0), Objective("size"), EPOCHS, 0, recovery=recovery
    )


def test_greedy_monitor_stops_a_hopeless_distillation_halfway(epochs_trained) -> None:
    evaluator = _evaluator()
    assert evaluator.recipe(BAD, "bad").steps[-1].name == "distill"  # the default recovery
    with pytest.raises(StopTrial):
        evaluator.evaluate(BAD, "bad", monitor=evaluator.stop_hopeless)
    assert epochs_trained["distill"] == [1, 2]  # stopped after 2 of 4 epochs
    (stopped,) = evaluator.stopped
    assert (stopped.name, stopped.epoch, stopped.epochs, stopped.step) == ("bad", 2, 4, "distill")
    assert stopped.drop > evaluator.early_stop.threshold(evaluator.limit, 2, EPOCHS) == 0.08
    assert "stopped early after recovery epoch 2 of 4 (distill)" in stopped.note()
    epochs_trained.clear()
    good = evaluator.evaluate(GOOD, "good", monitor=evaluator.stop_hopeless)
    assert epochs_trained["distill"] == [1, 2, 3, 4]  # all of them
    assert evaluator.meets(good, margin=False) and len(evaluator.stopped) == 1
    # watching does not change training: the unwatched run scores the same
    plain = _evaluator().evaluate(GOOD, "plain")
    assert plain.val_metric == good.val_metric and plain.val_loss == pytest.approx(good.val_loss)


def test_a_finetune_recovery_is_watched_the_same_way(epochs_trained) -> None:
    evaluator = _evaluator("finetune")
    with pytest.raises(StopTrial, match=r"epoch 2 of 4 \(finetune\)"):
        evaluator.evaluate(BAD, "bad", monitor=evaluator.stop_hopeless)
    assert epochs_trained["finetune"] == [1, 2]


@pytest.mark.parametrize("multi", [False, True], ids=["tpe-report", "nsga2-attrs"])
def test_optuna_prunes_the_hopeless_trial_and_completes_the_good_one(multi, epochs_trained):
    evaluator = _evaluator()
    fingerprint = evaluator.task.fingerprint()
    study = open_study(open_storage(None), None, fingerprint, {}, multi, evaluator=evaluator)
    run_study(study, evaluator, 2, None, seeds=[BAD, GOOD], multi=multi)
    bad, good = sorted(study.trials, key=lambda t: t.number)
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert "after recovery epoch 2 of 4 (distill)" in bad.user_attrs["stopped"]
    assert good.state == optuna.trial.TrialState.COMPLETE
    if multi:  # Optuna's report / should_prune serve single-objective studies only
        assert list(bad.user_attrs["recovery_drops"]) == ["2"]
        assert list(good.user_attrs["recovery_drops"]) == ["2", "3", "4"]
    else:  # reported through trial.report, pruned by the study's RecoveryPruner
        assert list(bad.intermediate_values) == [2] and bad.intermediate_values[2] > 0.08
        assert list(good.intermediate_values) == [2, 3, 4]
    assert epochs_trained["distill"] == [1, 2, 1, 2, 3, 4]  # bad: 2 of 4, good: 4 of 4


def test_all_candidates_hopeless_finishes_the_least_bad_as_least_drop(tmp_path) -> None:
    result = optimize(
        make_task(),
        max_drop=1.0,
        strategy="greedy",
        techniques=["magnitude_pruning"],
        ranges={"magnitude_pruning": [0.99]},
        recovery_epochs=EPOCHS,
        sensitivity_epochs=0,
        trials=2,
        out=tmp_path,
        progress=False,
        latency=False,
    )
    assert result.stopped, "no greedy verification was stopped early"
    assert all(s.step == "distill" and s.epoch == 2 and s.epochs == EPOCHS for s in result.stopped)
    least = min(result.stopped, key=lambda s: s.drop)
    assert [r.name for r in result.records] == ["least-drop"]
    assert result.records[0].allocation == least.allocation
    assert not result.met and result.best_found is not None
    notes = result.report.notes
    assert any(f"{least.name}, the least bad, is finished as least-drop" in n for n in notes)
    assert sum("stopped early after recovery epoch 2 of 4" in n for n in notes) == len(
        result.stopped
    )
