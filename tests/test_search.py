"""The search loop on real Fashion-MNIST: modes, exact resume, errors."""

import json

import pytest
import torch

from idarts.config import ConfigError, SearchConfig
from idarts.datasets import DataNotFoundError
from idarts.genotypes import Genotype
from idarts.runner import RunFolderError, run_search
from idarts.search import SEARCH_METRICS, NonFiniteLossError, Searcher

METRIC_NAMES = {*SEARCH_METRICS, "genotype"}


def run(config, epochs=None):
    searcher = Searcher(config)
    metrics = [searcher.run_epoch() for _ in range(epochs or config.epochs)]
    return searcher, metrics


def assert_same_state(first, second):
    first_state = first.network.state_dict()
    second_state = second.network.state_dict()
    assert first_state.keys() == second_state.keys()
    for name in first_state:
        assert torch.equal(first_state[name], second_state[name]), name


def strip_timing(metrics):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in metrics]


def test_epoch_metrics_complete(tiny_config):
    _, metrics = run(tiny_config(epochs=1))
    assert set(metrics[0]) == METRIC_NAMES
    assert metrics[0]["epoch"] == 1
    assert 0.0 <= metrics[0]["valid_acc"] <= 100.0
    Genotype.from_json(metrics[0]["genotype"])


def test_idarts_backtracks_edges(tiny_config):
    searcher, metrics = run(tiny_config(mode="idarts", threshold=0.0))
    assert sum(row["backtracked_edges"] for row in metrics) > 0
    events = searcher.arch_history[-1]["gate_events"]
    assert events
    assert sum(len(event["edges"]) for event in events) == metrics[-1]["backtracked_edges"]


def test_pcdarts_never_backtracks(tiny_config):
    _, metrics = run(tiny_config(mode="pcdarts"))
    assert all(row["backtracked_edges"] == 0 for row in metrics)


def test_warmup_keeps_arch_fixed(tiny_config):
    searcher = Searcher(tiny_config(warmup_epochs=1))
    alpha_before = searcher.network.alpha["normal"].detach().clone()
    searcher.run_epoch()
    assert torch.equal(searcher.network.alpha["normal"], alpha_before)
    searcher.run_epoch()
    assert not torch.equal(searcher.network.alpha["normal"], alpha_before)


@pytest.mark.parametrize("changes", [{"threshold": 1.0}, {"eta_b": 0.0}])
def test_disabled_backtracking_equals_pcdarts(tiny_config, changes):
    reference, reference_metrics = run(tiny_config(mode="pcdarts"))
    disabled, disabled_metrics = run(tiny_config(mode="idarts", **changes))
    assert_same_state(reference, disabled)
    assert strip_timing(reference_metrics) == strip_timing(disabled_metrics)


def test_backtracking_changes_the_search(tiny_config):
    reference, _ = run(tiny_config(mode="pcdarts"))
    backtracked, _ = run(tiny_config(mode="idarts", threshold=0.0, eta_b=0.3))
    assert not torch.equal(reference.network.alpha["normal"], backtracked.network.alpha["normal"])


@pytest.mark.parametrize("mode", ["idarts", "pcdarts"])
def test_resume_equals_uninterrupted(tiny_config, mode):
    config = tiny_config(mode=mode, epochs=3, warmup_epochs=1, threshold=0.0)
    uninterrupted, uninterrupted_metrics = run(config)

    first, first_metrics = run(config, epochs=2)
    state = first.state_dict()
    torch.manual_seed(1234)
    resumed = Searcher(config)
    resumed.load_state_dict(state)
    last_metrics = resumed.run_epoch()

    assert_same_state(uninterrupted, resumed)
    assert strip_timing(uninterrupted_metrics) == strip_timing(first_metrics + [last_metrics])
    assert resumed.arch_history == uninterrupted.arch_history
    if mode == "idarts":
        psi_uninterrupted = uninterrupted.architect.psi()
        psi_resumed = resumed.architect.psi()
        assert torch.equal(psi_uninterrupted["normal"], psi_resumed["normal"])


def test_resume_rejects_other_settings(tiny_config):
    searcher = Searcher(tiny_config())
    state = searcher.state_dict()
    other = Searcher(tiny_config(threshold=0.9))
    with pytest.raises(ValueError, match="threshold"):
        other.load_state_dict(state)


def test_run_after_last_epoch_raises(tiny_config):
    searcher, _ = run(tiny_config(epochs=1))
    assert searcher.done
    with pytest.raises(RuntimeError, match="already ran all 1 epochs"):
        searcher.run_epoch()


def test_missing_data_names_path(tiny_config, tmp_path):
    config = tiny_config(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="nowhere") as error:
        Searcher(config)
    assert "dataset-fashion-mnist" in str(error.value)


def test_non_finite_loss_names_epoch_and_step(tiny_config):
    searcher = Searcher(tiny_config())
    with torch.no_grad():
        searcher.network.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 0") as error:
        searcher.run_epoch()
    assert error.value.epoch == 1
    assert error.value.phase == "architecture"


def test_batch_larger_than_data_is_rejected(tiny_config):
    with pytest.raises(ValueError, match="batch_size=16"):
        Searcher(tiny_config(subset=20, batch_size=16))


def test_two_epoch_search_writes_valid_genotype(tiny_config, tmp_path):
    metrics = run_search(tiny_config(warmup_epochs=1), tmp_path, show_progress=False)

    genotype = Genotype.from_json((tmp_path / "genotype.json").read_text())
    assert len(genotype.normal) == 8
    assert len(genotype.reduce) == 8
    assert metrics["epoch"] == 2
    arch = json.loads((tmp_path / "arch.json").read_text())
    assert [row["epoch"] for row in arch["epochs"]] == [1, 2]
    assert len(arch["epochs"][1]["psi"]["normal"]) == 14
    lines = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 3
    for name in ("normal.png", "reduce.png", "arch_heatmap.png", "config.yaml", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_run_folder_is_not_overwritten(tiny_config, tmp_path):
    config = tiny_config(epochs=1)
    run_search(config, tmp_path, show_progress=False)
    with pytest.raises(RunFolderError, match="--resume"):
        run_search(config, tmp_path, show_progress=False)


def test_run_folder_resume_after_crash(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(epochs=3)
    run_search(config, tmp_path / "reference", show_progress=False)

    original = Searcher.run_epoch

    def crash_on_third_epoch(self):
        if self.epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self)

    monkeypatch.setattr(Searcher, "run_epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "crashed", show_progress=False)
    monkeypatch.setattr(Searcher, "run_epoch", original)
    run_search(config, tmp_path / "crashed", resume=True, show_progress=False)

    for name in ("genotype.json",):
        assert (tmp_path / "crashed" / name).read_text() == (tmp_path / "reference" / name).read_text()
    rows = (tmp_path / "crashed" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3"]


def test_resume_without_checkpoint_is_rejected(tiny_config, tmp_path):
    with pytest.raises(RunFolderError, match="no checkpoint"):
        run_search(tiny_config(), tmp_path, resume=True, show_progress=False)


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"mode": "darts"}, "mode"),
        ({"partial_k": 3}, "partial_k"),
        ({"warmup_epochs": 60}, "warmup_epochs"),
        ({"dataset": "mnist"}, "dataset"),
        ({"lr": float("nan")}, "lr"),
        ({"eta_b": -0.1}, "eta_b"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_config_rejects_invalid_value(changes, field):
    with pytest.raises(ConfigError, match=f"invalid {field}="):
        SearchConfig(**changes)


def test_config_rejects_unknown_key():
    with pytest.raises(ConfigError, match="unknown search settings \\['treshold'\\]"):
        SearchConfig.from_dict({"treshold": 0.5})


def test_config_yaml_round_trip(tmp_path):
    config = SearchConfig(threshold=0.25, partial_k=8, arch_betas=(0.6, 0.99))
    config.to_yaml(tmp_path / "config.yaml")
    assert SearchConfig.from_yaml(tmp_path / "config.yaml") == config


def test_two_layer_network_without_normal_cells(tiny_config):
    _, metrics = run(tiny_config(layers=2, epochs=1, threshold=0.0))
    assert metrics[0]["epoch"] == 1
