import numpy as np
import optuna
import pytest

from hpsearch.config import TrainConfig
from hpsearch.models import build_model
from hpsearch.objective import Objective
from hpsearch.runner import prepare
from hpsearch.train import predict, resolve_device, seed_everything, train


@pytest.fixture
def prepared(tiny_cfg):
    return prepare(tiny_cfg, resolve_device("cpu"))


def _train(prepared, **kw):
    cfg = prepared.cfg
    seed_everything(0)
    model = build_model(cfg.model_family, cfg.model, prepared.windows.spec)
    tc = TrainConfig(**{"batch_size": 32, "samples_per_epoch": 256, "device": "cpu", **kw})
    return model, train(model, prepared.windows, tc, 0, prepared.valid_anchors)


def test_early_stop_keeps_the_best_epoch_value_and_weights(prepared):
    model, result = _train(prepared, lr=3e-2, max_epochs=30, patience=2)
    losses = [e.valid_loss for e in result.history]
    assert result.stop_reason == "early_stop"
    assert result.best_valid == min(losses) < losses[-1]
    assert result.best_epoch == 1 + int(np.argmin(losses))
    assert len(losses) == result.best_epoch + 2  # stopped `patience` epochs after the best
    model.load_state_dict(result.best_state)
    pred, true = predict(model, prepared.windows, prepared.valid_anchors)
    assert np.mean((pred.astype(np.float64) - true) ** 2) == pytest.approx(result.best_valid, rel=1e-6)


def test_max_epochs_stop(prepared):
    _, result = _train(prepared, lr=1e-4, max_epochs=2, patience=5)
    assert result.stop_reason == "max_epochs" and len(result.history) == 2


def test_divergence_is_caught(prepared):
    _, result = _train(prepared, lr=1e30, max_epochs=5, patience=5)
    assert result.stop_reason == "diverged"


def test_same_seed_same_losses(prepared):
    _, a = _train(prepared, lr=1e-3, max_epochs=2)
    _, b = _train(prepared, lr=1e-3, max_epochs=2)
    assert [e.valid_loss for e in a.history] == [e.valid_loss for e in b.history]


def test_objective_with_fixed_trial(prepared):
    objective = Objective(prepared.cfg, prepared.windows, prepared.valid_anchors)
    trial = optuna.trial.FixedTrial({"lr": 1e-3})
    value = objective(trial)
    attrs = trial.user_attrs
    assert value == pytest.approx(min(attrs["valid_loss"]), rel=1e-5)
    assert attrs["best_epoch"] == 1 + int(np.argmin(attrs["valid_loss"]))
    assert attrs["stop_reason"] in ("early_stop", "max_epochs")


def test_diverging_trial_is_pruned_not_nan(prepared):
    objective = Objective(prepared.cfg, prepared.windows, prepared.valid_anchors)
    trial = optuna.trial.FixedTrial({"lr": 1e30})
    with pytest.raises(optuna.TrialPruned):
        objective(trial)
    assert trial.user_attrs["stop_reason"] == "diverged"


class _InterruptedWhileDrawing:
    """Artifacts whose drawing is where Ctrl-C lands: after training, before the trial returns."""

    def finished(self, *args, **kwargs):
        raise KeyboardInterrupt


def test_ctrl_c_after_training_marks_the_trial_interrupted(prepared):
    objective = Objective(
        prepared.cfg, prepared.windows, prepared.valid_anchors, artifacts=_InterruptedWhileDrawing()
    )
    trial = optuna.trial.FixedTrial({"lr": 1e-3})
    with pytest.raises(KeyboardInterrupt):
        objective(trial)
    assert trial.user_attrs["stop_reason"] == "interrupted"
    assert trial.user_attrs["epochs"] >= 1  # the epochs it trained are kept
