"""Sweep files: validation before Ray starts, the shipped configs, and the pieces that need no cluster."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tune.sweep_config import REPORTED_METRICS, SweepConfig, SweepConfigError
from tune.tracking import TrackingSettings, TrialRun, flatten_params
from tune.trainable import complete_result, non_finite_metrics
from tune_helpers import free_port

CONFIG_DIR = Path(__file__).resolve().parent.parent / "tune" / "configs"

VALID = {
    "name": "valid",
    "search": {"epochs": 10, "warmup_epochs": 3, "init_channels": 8, "partial_k": 2},
    "space": {
        "threshold": {"type": "float", "low": 0.2, "high": 0.8},
        "arch_lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "scale": "log"},
        "seed": {"type": "int", "low": 0, "high": 4},
    },
    "scheduler": {"type": "asha", "grace_period": 4},
}


def with_changes(**changes):
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in VALID.items()}
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        if value is DELETE:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    return data


DELETE = object()

INVALID_CASES = [
    pytest.param(with_changes(colour="blue"), "colour='blue'", "unknown key", id="unknown top-level key"),
    pytest.param(with_changes(name=DELETE), "name=None", "needs a name", id="missing name"),
    pytest.param(with_changes(name="my sweep"), "name='my sweep'", "letters, digits", id="name with space"),
    pytest.param(with_changes(metric="accuracy"), "metric='accuracy'", "valid_acc", id="unknown metric"),
    pytest.param(with_changes(mode="idarts"), "mode='idarts'", "search.mode", id="search mode as metric mode"),
    pytest.param(with_changes(num_samples=0), "num_samples=0", "positive", id="zero samples"),
    pytest.param(with_changes(max_concurrent=1.5), "max_concurrent=1.5", "positive", id="fractional concurrency"),
    pytest.param(with_changes(max_failures=-2), "max_failures=-2", "-1", id="max_failures below -1"),
    pytest.param(with_changes(search__lr=-0.1), "lr=-0.1", "positive learning rate", id="invalid base search"),
    pytest.param(with_changes(search__colour=1), "search.colour=1", "unknown key", id="unknown search key"),
    pytest.param(
        with_changes(space__layer_count={"type": "int", "low": 1, "high": 2}),
        "space.layer_count",
        "unknown key",
        id="unknown swept field",
    ),
    pytest.param(
        with_changes(space__threshold={"type": "float", "low": 0.2, "high": 1.5}),
        "threshold=1.5",
        "[0, 1]",
        id="range outside field limits",
    ),
    pytest.param(
        with_changes(space__threshold={"type": "float", "low": 0.8, "high": 0.2}),
        "space.threshold.high=0.2",
        "above low",
        id="inverted range",
    ),
    pytest.param(
        with_changes(space__arch_lr={"type": "float", "low": 0.0, "high": 1.0e-3, "scale": "log"}),
        "space.arch_lr.low=0.0",
        "positive low",
        id="log scale from zero",
    ),
    pytest.param(
        with_changes(space__arch_lr={"type": "float", "low": 1.0e-4, "high": 1.0e-3, "scale": "cubic"}),
        "space.arch_lr.scale='cubic'",
        "linear",
        id="unknown scale",
    ),
    pytest.param(
        with_changes(space__layers={"type": "float", "low": 3, "high": 8}),
        "space.layers.type='float'",
        "type: int",
        id="float range on integer field",
    ),
    pytest.param(
        with_changes(search__partial_k=DELETE, space__partial_k={"type": "categorical", "values": [2, 3]}),
        "partial_k=3",
        "valid values: [1, 2, 4, 8]",
        id="partial_k not dividing channels",
    ),
    pytest.param(
        with_changes(
            search__partial_k=DELETE,
            search__init_channels=DELETE,
            space__partial_k={"type": "categorical", "values": [2, 4]},
            space__init_channels={"type": "categorical", "values": [4, 6]},
        ),
        "'partial_k': 4, 'init_channels': 6",
        "K must divide",
        id="partial_k invalid for one swept channel count",
    ),
    pytest.param(
        with_changes(space__seed={"type": "categorical", "values": []}),
        "space.seed.values=[]",
        "non-empty",
        id="empty categorical",
    ),
    pytest.param(
        with_changes(space__arch_betas={"type": "categorical", "values": [[0.5, 0.9]]}),
        "space.arch_betas.values",
        "Optuna",
        id="list as categorical choice",
    ),
    pytest.param(
        with_changes(space__mode={"type": "fixed"}),
        "space.mode.value=None",
        "needs a value",
        id="fixed without value",
    ),
    pytest.param(
        with_changes(space__epochs={"type": "int", "low": 10, "high": 20}),
        "space.epochs",
        "also set under search",
        id="field both fixed and swept",
    ),
    pytest.param(
        with_changes(scheduler__grace_period=3),
        "scheduler.grace_period=3",
        "warmup_epochs=3",
        id="grace period equal to warm-up",
    ),
    pytest.param(
        with_changes(
            search__warmup_epochs=DELETE,
            space__warmup_epochs={"type": "int", "low": 2, "high": 5},
        ),
        "scheduler.grace_period=4",
        "warmup_epochs=5",
        id="grace period within swept warm-up",
    ),
    pytest.param(
        with_changes(scheduler__grace_period=11),
        "scheduler.grace_period=11",
        "max_t=10",
        id="grace period beyond epochs",
    ),
    pytest.param(
        with_changes(scheduler__type="hyperband"),
        "scheduler.type='hyperband'",
        "asha",
        id="unknown scheduler",
    ),
    pytest.param(
        with_changes(scheduler__reduction_factor=1),
        "scheduler.reduction_factor=1",
        "above 1",
        id="reduction factor 1",
    ),
    pytest.param(with_changes(resources={"cpu": 0}), "resources.cpu=0", "positive", id="zero CPUs"),
    pytest.param(with_changes(resources={"gpu": 1.5}), "resources.gpu=1.5", "below 1", id="GPU 1.5"),
    pytest.param(
        with_changes(search__device="cuda"),
        "resources.gpu=0",
        "needs a GPU",
        id="CUDA without GPU resources",
    ),
    pytest.param(
        with_changes(mlflow={"tracking_uri": "file:///tmp/mlruns"}),
        "mlflow.tracking_uri='file:///tmp/mlruns'",
        "maintenance mode",
        id="MLflow file store",
    ),
    pytest.param(with_changes(mlflow={"enabled": "yes"}), "mlflow.enabled='yes'", "true or false", id="enabled as text"),
    pytest.param(with_changes(optuna={"seed": -1}), "optuna.seed=-1", "0 or a positive", id="negative sampler seed"),
    pytest.param(
        with_changes(points_to_evaluate=[{"threshold": 0.5, "seed": 1}]),
        "points_to_evaluate[0]",
        "arch_lr",
        id="point missing a sampled field",
    ),
    pytest.param(
        with_changes(points_to_evaluate=[{"threshold": 0.95, "seed": 1, "arch_lr": 5.0e-4}]),
        "points_to_evaluate[0].threshold=0.95",
        "space.threshold",
        id="point outside the space",
    ),
    pytest.param(
        with_changes(num_samples=1, points_to_evaluate=[{"threshold": 0.5, "seed": seed, "arch_lr": 5.0e-4} for seed in (1, 2)]),
        "num_samples=1",
        "at least the 2 trials",
        id="fewer samples than points",
    ),
    pytest.param(
        with_changes(checkpoint_frequency=-1), "checkpoint_frequency=-1", "only at the end", id="negative frequency"
    ),
]


def test_valid_sweep_loads():
    config = SweepConfig.from_dict(VALID)

    assert config.base_search_config().epochs == 10
    assert config.space["arch_lr"].scale == "log"
    assert config.space["seed"].probe_values() == [0, 1, 2, 3, 4]
    assert config.experiment_name == "valid"
    assert config.search_mode_tag == "idarts"


@pytest.mark.parametrize(("data", "key_and_value", "fix"), INVALID_CASES)
def test_invalid_sweep_names_key_and_value(data, key_and_value, fix):
    with pytest.raises(SweepConfigError) as raised:
        SweepConfig.from_dict(data)

    message = str(raised.value)
    assert key_and_value in message
    assert fix in message


def test_swept_mode_is_tagged_mixed():
    config = SweepConfig.from_dict(
        with_changes(space__mode={"type": "categorical", "values": ["idarts", "pcdarts"]})
    )

    assert config.search_mode_tag == "mixed"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_config_is_valid(path):
    config = SweepConfig.from_yaml(path)

    assert config.name == path.stem
    assert config.source_text == path.read_text()


def test_shipped_configs_match_their_purpose():
    demo = SweepConfig.from_yaml(CONFIG_DIR / "fashion_mnist_demo.yaml")
    paper = SweepConfig.from_yaml(CONFIG_DIR / "cifar10_paper.yaml")
    ablation = SweepConfig.from_yaml(CONFIG_DIR / "threshold_ablation.yaml")

    assert set(demo.space) >= {"threshold", "partial_k", "seed"}
    assert demo.resources.gpu == 0
    paper_search = paper.base_search_config()
    assert (paper_search.epochs, paper_search.warmup_epochs, paper_search.batch_size) == (50, 15, 256)
    assert (paper_search.init_channels, paper_search.layers) == (16, 8)
    assert paper.resources.gpu > 0
    cells = {(point["mode"], point["threshold"], point["seed"]) for point in ablation.points_to_evaluate}
    assert len(cells) == len(ablation.points_to_evaluate) == ablation.num_samples == 25
    assert {(mode, seed) for mode, _, seed in cells if mode == "pcdarts"} == {("pcdarts", seed) for seed in range(5)}
    assert {threshold for mode, threshold, _ in cells if mode == "idarts"} == {0.3, 0.5, 0.7, 0.9}


def test_cli_rejects_bad_file_before_ray_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_changes(scheduler__grace_period=2)))
    script = (
        "import sys; from idarts.cli_sweep import main; "
        f"code = main(['sweep', {str(bad)!r}]); "
        "print('ray imported' if 'ray' in sys.modules else 'ray not imported'); sys.exit(code)"
    )

    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert completed.returncode == 2
    assert "scheduler.grace_period=2" in completed.stderr
    assert "ray not imported" in completed.stdout


def test_result_has_every_column_from_first_epoch():
    result = complete_result({"epoch": 1, "valid_acc": 10.0})

    assert set(result) == {"epoch", "genotype", *REPORTED_METRICS}
    assert result["genotype"] == ""
    assert result["train_loss"] is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_are_found(value):
    result = complete_result({"epoch": 2, "valid_acc": 10.0, "train_loss": value})

    assert list(non_finite_metrics(result)) == ["train_loss"]


def test_params_flatten_lists_and_none_as_json():
    params = flatten_params({"arch_betas": [0.5, 0.999], "data_dir": None, "lr": 0.1, "mode": "idarts"})

    assert params == {"arch_betas": "[0.5, 0.999]", "data_dir": "null", "lr": "0.1", "mode": "idarts"}


def test_unreachable_server_warns_once_per_trial(caplog):
    settings = TrackingSettings(
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        experiment_name="offline",
        sweep_name="offline",
        storage_root="/tmp/sweeps",
    )
    run = TrialRun(settings, trial_id="abc", trial_name="offline_abc", params={})

    with caplog.at_level(logging.WARNING, logger="tune.tracking"):
        run.attach()
        for epoch in (1, 2, 3):
            run.log_epoch(epoch, {"valid_acc": 10.0}, None)
        run.set_status("FINISHED")

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "offline_abc" in warnings[0]
    assert "idarts sync-mlflow /tmp/sweeps" in warnings[0]
    assert not run.online


class TestOptunaStates:
    """``SweepOptunaSearch.final_state`` without a cluster: the cases that Ray's OptunaSearch gets wrong."""

    @pytest.fixture
    def search(self):
        from tune.optuna_search import SweepOptunaSearch

        search = SweepOptunaSearch()
        search.set_search_properties("valid_acc", "max", {"threshold": _uniform()})
        return search

    def test_full_run_is_complete(self, search):
        from optuna.trial import TrialState

        assert search.final_state({"valid_acc": 80.0, "epoch": 3, "config/epochs": 3}, False) == (
            TrialState.COMPLETE,
            80.0,
        )

    def test_early_stop_is_pruned(self, search):
        from optuna.trial import TrialState

        assert search.final_state({"valid_acc": 80.0, "epoch": 2, "config/epochs": 3}, False)[0] is TrialState.PRUNED

    @pytest.mark.parametrize("value", [math.nan, math.inf])
    def test_non_finite_score_fails(self, search, value):
        from optuna.trial import TrialState

        assert search.final_state({"valid_acc": value, "epoch": 3, "config/epochs": 3}, False)[0] is TrialState.FAIL

    def test_error_fails_even_with_a_score(self, search):
        from optuna.trial import TrialState

        assert search.final_state({"valid_acc": 80.0, "epoch": 3, "config/epochs": 3}, True)[0] is TrialState.FAIL

    def test_resumed_failed_trial_is_added_complete(self, search):
        search.suggest("trial_a")
        search.on_trial_complete("trial_a", None, error=True)

        search.on_trial_complete("trial_a", {"valid_acc": 70.0, "epoch": 2, "config/epochs": 2})

        summary = search.study_summary()
        assert [record["state"] for record in summary] == ["FAIL", "COMPLETE"]
        assert [record["tune_trial_id"] for record in summary] == ["trial_a", "trial_a"]
        assert summary[1]["params"] == summary[0]["params"]
        assert summary[1]["value"] == 70.0

    def test_nan_trial_is_not_left_running(self, search):
        search.suggest("trial_a")

        search.on_trial_result("trial_a", {"valid_acc": math.nan, "epoch": 1})
        search.on_trial_complete("trial_a", {"valid_acc": math.nan, "epoch": 1, "config/epochs": 1})

        assert [record["state"] for record in search.study_summary()] == ["FAIL"]


def _uniform():
    from ray import tune

    return tune.uniform(0.0, 1.0)


CLUSTER_DIR = Path(__file__).resolve().parent.parent / "tune" / "cluster"


def test_cluster_launcher_config_is_valid():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER_DIR / "ray_cluster_gpu.yaml").read_text())

    validate_config(prepare_config(config))
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert any("idarts[tune]" in command for command in config["setup_commands"])


def test_rayjob_runs_idarts_sweep():
    manifest = yaml.safe_load((CLUSTER_DIR / "rayjob.yaml").read_text())

    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    entrypoint = manifest["spec"]["entrypoint"]
    assert entrypoint.startswith("idarts sweep ")
    assert "--address auto" in entrypoint
    assert "--storage-path /shared/" in entrypoint
    (workers,) = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]


def test_resume_rejects_changed_sweep_file(tmp_path):
    from tune.runner import SweepFolderError, check_resumed_config

    saved = SweepConfig.from_dict(VALID)
    (tmp_path / "sweep.yaml").write_text(saved.to_yaml_text())

    check_resumed_config(SweepConfig.from_dict(with_changes(mlflow={"tracking_uri": "sqlite:////tmp/x.db"})), tmp_path)
    with pytest.raises(SweepFolderError) as raised:
        check_resumed_config(SweepConfig.from_dict(with_changes(num_samples=3)), tmp_path)

    assert "['num_samples']" in str(raised.value)
