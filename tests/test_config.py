import pytest
import yaml

from hpsearch.config import builtin_studies, from_dict, load_study, resolve_study
from hpsearch.errors import ConfigError
from tests.conftest import tiny_study


@pytest.mark.parametrize("name", sorted(builtin_studies()))
def test_builtin_studies_load(name):
    cfg = load_study(name)
    assert cfg.name == name
    assert cfg.search, "every built-in study searches something"


@pytest.mark.parametrize("name", sorted(builtin_studies()))
def test_a_study_config_survives_its_dict_round_trip(name):
    # The dict is what the storage keeps (export, report) and what --workers pass to their
    # processes; a search bound of 0 (transformer_sweep's dropout) was once dropped from it.
    cfg = load_study(name)
    assert from_dict(cfg.to_dict(), "stored") == cfg


def test_zero_bounds_and_log_false_are_spelled_as_in_a_study_file():
    raw = {
        "search": {
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "hidden": {"type": "int", "low": 0, "high": 4},
        }
    }
    cfg = from_dict({**tiny_study(None), **raw}, "x.yaml")
    assert cfg.to_dict()["search"] == {
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "hidden": {"type": "int", "low": 0, "high": 4},
    }


def test_lr_sweep_is_the_reference_question():
    cfg = load_study("lr_sweep")
    (lr,) = cfg.search
    assert (lr.name, lr.low, lr.high, lr.log) == ("lr", 1e-6, 1e-2, True)
    assert (cfg.model.c1, cfg.model.c2, cfg.data.seq_len, cfg.data.horizon) == (8, 16, 96, 20)
    assert cfg.n_trials >= 16


def test_float_written_without_dot_is_a_number():
    raw = yaml.safe_load(
        "search: {lr: {type: float, low: 1e-5, high: 1e-2, log: true}}\ntraining: {lr: 3e-4}"
    )
    assert isinstance(raw["training"]["lr"], str)  # the PyYAML quirk this guards against
    cfg = from_dict({**tiny_study(None), **raw}, "x.yaml")
    assert cfg.training.lr == 3e-4 and cfg.search[0].low == 1e-5


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"trainig": {}}, "unknown key 'trainig' (did you mean 'training'?)"),
        ({"training": {"lr_rate": 0.1}}, "training: unknown key 'lr_rate'"),
        (
            {"search": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}},
            "low <= high must hold, got low=0.1 high=0.01",
        ),
        (
            {"search": {"lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}},
            "log=true needs low > 0",
        ),
        ({"search": {"c1": {"type": "categorical", "choices": []}}}, "non-empty 'choices'"),
        (
            {"search": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}},
            "not a searchable parameter",
        ),
        ({"n_trials": 0}, "n_trials >= 1 must hold"),
        ({"model": {"family": "cnn"}}, "unknown family 'cnn' (did you mean 'cnn2d'?); valid: cnn2d"),
        ({"sampler": {"name": "tpee"}}, "unknown sampler 'tpee' (did you mean 'tpe'?)"),
        ({"pruner": {"name": "medain"}}, "unknown pruner 'medain' (did you mean 'median'?)"),
        ({"pruner": {"name": "median", "warmup": 3}}, "pruner.warmup: unknown option for median"),
        ({"training": {"batch_size": "big"}}, "training.batch_size: must be an integer"),
        ({"split": {"train": 0.7, "valid": 0.2, "test": 0.2}}, "summing to 1"),
        ({"split": {"embargo": 3}}, "embargo >= horizon + output_window - 1 must hold"),
        ({"data": {"scaler": "minmax"}}, "scaler must be one of per_ticker, standard"),
        ({"search": {"kernel_size": {"type": "int", "low": 3, "high": 5}}}, "kernel_size must be odd"),
        ({"search": {"c1": {"type": "int", "low": 0, "high": 0}}}, "c1 >= 1 must hold"),
        ({"search": {"hidden": {"type": "categorical", "choices": ["a", 16]}}}, "(at hidden=a)"),
        ({"pruner": {"name": "median", "n_warmup_steps": "five"}}, "pruner median (n_warmup_steps='five')"),
        ({"pruner": {"name": "percentile"}}, "missing 1 required positional argument: 'percentile'"),
        ({"sampler": {"name": "qmc", "qmc_type": "bogus"}}, "sampler qmc (qmc_type='bogus')"),
        ({"model": [1, 2]}, "model: must be a mapping"),
    ],
)
def test_invalid_study_is_one_clear_error(patch, message):
    with pytest.raises(ConfigError) as info:
        from_dict(tiny_study(None, **patch), "studies/x.yaml")
    text = str(info.value)
    assert text.startswith("studies/x.yaml"), text
    assert message in text, text
    assert "\n" not in text


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "lr sweep"])
def test_study_names_cannot_leave_the_studies_folders(bad):
    with pytest.raises(ConfigError, match="study name may hold only"):
        resolve_study(bad)


def test_unknown_study_lists_builtins():
    with pytest.raises(ConfigError, match=r"unknown study 'lr_swep' \(did you mean 'lr_sweep'\?\)"):
        resolve_study("lr_swep")


def test_explicit_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(tiny_study(None, name="mine")))
    assert load_study(str(path)).name == "mine"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_study(str(path))


def test_yaml_object_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_study(str(path))


def test_with_params_routes_model_and_training_fields(tiny_cfg):
    run = tiny_cfg.with_params({"lr": 0.003, "c1": 5})
    assert run.training.lr == 0.003 and run.model.c1 == 5
    assert tiny_cfg.training.lr != 0.003  # frozen original untouched
