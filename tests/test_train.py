"""Training from scratch: config, schedules, a real Fashion-MNIST run, exact resume, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from idarts.cli import main
from idarts.config import ConfigError
from idarts.datasets import get_spec
from idarts.genotypes import KNOWN_GENOTYPES
from idarts.train import DATASET_DEFAULTS, TrainConfig, Trainer, learning_rate

DATA_DIR = get_spec("fashion-mnist").default_dir
needs_fashion_mnist = pytest.mark.skipif(
    not (Path(DATA_DIR) / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not found in {DATA_DIR}; install the dataset-fashion-mnist package",
)

# A network and data small enough for a few seconds per epoch on 2 CPU cores.
TINY = {
    "genotype": "PC_DARTS_cifar",
    "dataset": "fashion-mnist",
    "subset": 192,
    "test_subset": 100,
    "batch_size": 32,
    "init_channels": 4,
    "layers": 3,
    "epochs": 2,
    "drop_path": 0.2,
    "cutout": 8,
    "device": "cpu",
}


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


# ---------------------------------------------------------------------------
# Config


def test_config_cifar_defaults_are_darts():
    config = TrainConfig(genotype="DARTS_V2", dataset="cifar10")

    assert (config.init_channels, config.layers, config.epochs, config.batch_size) == (36, 20, 600, 96)
    assert (config.lr, config.momentum, config.weight_decay) == (0.025, 0.9, 3e-4)
    assert (config.cutout, config.drop_path, config.auxiliary_weight, config.grad_clip) == (16, 0.3, 0.4, 5.0)
    assert config.lr_schedule == "cosine"
    assert config.network == "cifar"


def test_config_imagenet_defaults():
    config = TrainConfig(genotype="PC_DARTS_image", dataset="imagenet")

    assert (config.init_channels, config.layers, config.network) == (48, 14, "imagenet")
    assert (config.label_smoothing, config.weight_decay) == (0.1, 3e-5)
    assert (config.batch_size, config.warmup_epochs) == (1024, 5)


def test_config_imagenet_small_batch_has_no_warmup():
    config = TrainConfig(genotype="PC_DARTS_image", dataset="imagenet", batch_size=128)

    assert config.warmup_epochs == 0


def test_config_explicit_values_win():
    config = TrainConfig(genotype="DARTS_V2", dataset="cifar10", epochs=3, cutout=0)

    assert config.epochs == 3
    assert config.cutout == 0
    assert config.layers == DATASET_DEFAULTS["cifar10"]["layers"]


def test_config_yaml_round_trip(tmp_path):
    config = tiny_config(valid_size=20, amp=True)
    path = tmp_path / "train.yaml"

    config.to_yaml(path)

    assert TrainConfig.from_yaml(path) == config


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"genotype": ""}, "genotype"),
        ({"dataset": "mnist"}, "dataset"),
        ({"lr": -1.0}, "lr"),
        ({"drop_path": 1.0}, "drop_path"),
        ({"init_channels": 5}, "init_channels"),
        ({"layers": 2}, "layers"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"valid_size": 192}, "valid_size"),
        ({"warmup_epochs": 2}, "warmup_epochs"),
        ({"amp": "yes"}, "amp"),
    ],
)
def test_config_rejects_invalid_values(changes, field):
    with pytest.raises(ConfigError, match=f"invalid {field}="):
        tiny_config(**changes)


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown training settings"):
        TrainConfig.from_dict({**TINY, "learning_rate": 0.1})


# ---------------------------------------------------------------------------
# Schedules


def test_cosine_learning_rate():
    config = tiny_config(epochs=10, lr=0.1, lr_min=0.0)

    rates = [learning_rate(config, epoch) for epoch in range(10)]

    assert rates[0] == pytest.approx(0.1)
    assert rates[5] == pytest.approx(0.05)
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[-1] > 0


def test_linear_warmup_then_decay():
    config = tiny_config(epochs=10, lr=0.5, warmup_epochs=5, lr_schedule="linear")

    rates = [learning_rate(config, epoch) for epoch in range(10)]

    assert rates[:5] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert rates[5:] == pytest.approx([0.25, 0.2, 0.15, 0.1, 0.05])


# ---------------------------------------------------------------------------
# Real training runs


@needs_fashion_mnist
def test_one_epoch_learns_fashion_mnist():
    # lr 0.01 keeps the BatchNorm running statistics close to the fast-moving weights. At
    # 0.025 the eval-mode accuracy after one epoch varied from 35% to 61% across seeds.
    config = TrainConfig(
        genotype="PC_DARTS_cifar", subset=2000, test_subset=1000, batch_size=32, init_channels=8,
        layers=5, epochs=1, lr=0.01, cutout=0, drop_path=0.0, device="cpu",
    )
    trainer = Trainer(config)

    metrics = trainer.run_epoch()

    assert trainer.done
    assert metrics["test_acc"] > 40.0
    assert metrics["train_acc"] > 30.0
    assert math.isnan(metrics["valid_acc"])


@needs_fashion_mnist
def test_metrics_of_an_epoch():
    trainer = Trainer(tiny_config(valid_size=32))

    first = trainer.run_epoch()

    assert set(first) >= {
        "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "drop_path", "epoch_seconds",
    }
    assert first["epoch"] == 1
    assert first["drop_path"] == 0.0
    assert math.isnan(first["test_acc"])
    assert 0.0 <= first["valid_acc"] <= 100.0
    assert trainer.best_metric == "valid_acc"

    second = trainer.run_epoch()
    assert second["drop_path"] == pytest.approx(0.1)
    assert 0.0 <= second["test_acc"] <= 100.0
    with pytest.raises(RuntimeError, match="already trained"):
        trainer.run_epoch()


@needs_fashion_mnist
def test_resume_matches_uninterrupted_run(tmp_path):
    config = tiny_config(valid_size=32, epochs=3)

    uninterrupted = Trainer(config)
    reference = [uninterrupted.run_epoch() for _ in range(3)]

    first = Trainer(config)
    first.run_epoch()
    torch.save(first.state_dict(), tmp_path / "checkpoint.pt")
    del first
    resumed = Trainer(config)
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=False))
    continued = [resumed.run_epoch() for _ in range(2)]

    for name, value in uninterrupted.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name
    for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "test_acc", "lr"):
        assert continued[-1][key] == reference[-1][key], key
    assert resumed.best_epoch == uninterrupted.best_epoch


@needs_fashion_mnist
def test_test_evaluation_leaves_training_unchanged():
    # The trainers run one after the other because both draw from the global RNGs.
    quiet = Trainer(tiny_config(test_every_epoch=False))
    for _ in range(2):
        quiet.run_epoch()
    tested = Trainer(tiny_config(test_every_epoch=True))
    for _ in range(2):
        tested.run_epoch()

    for name, value in quiet.network.state_dict().items():
        assert torch.equal(value, tested.network.state_dict()[name]), name


@needs_fashion_mnist
def test_load_state_dict_rejects_other_genotype():
    source = Trainer(tiny_config(epochs=1))
    target = Trainer(tiny_config(epochs=1, genotype="DARTS_V2"))

    with pytest.raises(ValueError, match="another genotype"):
        target.load_state_dict(source.state_dict())


# ---------------------------------------------------------------------------
# Command line


def cli_arguments(out: Path, genotype: str, *extra: str) -> list[str]:
    return [
        "train", "--genotype", genotype, "--dataset", "fashion-mnist", "--out", str(out), "--quiet",
        "--subset", "96", "--test-subset", "64", "--batch-size", "32", "--init-channels", "4",
        "--layers", "3", "--epochs", "1", "--device", "cpu", *extra,
    ]


def genotype_forms(tmp_path: Path) -> dict[str, str]:
    genotype = KNOWN_GENOTYPES["DARTS_V2"]
    path = tmp_path / "genotype.json"
    path.write_text(genotype.to_json())
    return {"file": str(path), "darts_text": genotype.to_darts_text(), "name": "DARTS_V2"}


@needs_fashion_mnist
@pytest.mark.parametrize("form", ["file", "darts_text", "name"])
def test_cli_train_accepts_genotype_forms(tmp_path, form, capsys):
    spec = genotype_forms(tmp_path)[form]
    out = tmp_path / "run"

    assert main(cli_arguments(out, spec)) == 0

    final = json.loads((out / "final.json").read_text())
    assert final["genotype"] == KNOWN_GENOTYPES["DARTS_V2"].to_dict()
    assert final["genotype_name"] == "DARTS_V2"
    assert "test accuracy" in capsys.readouterr().out


def test_cli_train_rejects_unknown_operation(tmp_path, capsys):
    text = KNOWN_GENOTYPES["DARTS_V2"].to_darts_text().replace("dil_conv_3x3", "conv_7x7")

    status = main(cli_arguments(tmp_path / "run", text))

    assert status == 2
    error = capsys.readouterr().err
    assert "unknown operation 'conv_7x7'" in error
    assert "sep_conv_3x3" in error
    assert not (tmp_path / "run" / "metrics.csv").exists()


@needs_fashion_mnist
def test_cli_train_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    arguments = cli_arguments(out, "PC_DARTS_cifar", "--epochs", "2", "--valid-size", "32")

    assert main(arguments) == 0
    for name in ("config.yaml", "genotype.json", "metrics.csv", "checkpoint.pt", "last.pt", "best.pt", "final.json"):
        assert (out / name).exists(), name

    final = json.loads((out / "final.json").read_text())
    assert final["params"] > final["params_without_aux"] > 0
    assert final["multiply_adds"] > 0
    assert 0.0 <= final["test_acc"] <= 100.0
    assert final["best_metric"] == "valid_acc"
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[-1]["test_acc"]) == final["test_acc"]

    # A second run into the same folder is rejected without --resume.
    assert main(arguments) == 2
    assert "--resume" in capsys.readouterr().err



@needs_fashion_mnist
def test_cli_resume_drops_rows_after_checkpoint(tmp_path):
    out = tmp_path / "run"
    arguments = cli_arguments(out, "PC_DARTS_cifar", "--epochs", "2")
    assert main(arguments) == 0
    reference = (out / "metrics.csv").read_text()

    # Rewind the run to the end of epoch 1: checkpoint of epoch 1, metrics rows of both epochs.
    config = TrainConfig.from_yaml(out / "config.yaml")
    trainer = Trainer(config)
    trainer.run_epoch()
    torch.save(trainer.state_dict(), out / "checkpoint.pt")
    (out / "final.json").unlink()

    assert main([*arguments, "--resume"]) == 0

    resumed = (out / "metrics.csv").read_text().splitlines()
    expected = reference.splitlines()
    assert len(resumed) == len(expected) == 3
    for resumed_row, expected_row in zip(resumed, expected):
        # Every column but epoch_seconds (the last) is identical.
        assert resumed_row.rsplit(",", 1)[0] == expected_row.rsplit(",", 1)[0]


def test_cli_resume_without_checkpoint(tmp_path, capsys):
    status = main(cli_arguments(tmp_path / "missing", "DARTS_V2", "--resume"))

    assert status == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["count", "DARTS_V2"], "3,349,342"),
        (["count", "PC_DARTS_cifar"], "3.63M"),
        (["count", "PC_DARTS_image", "--dataset", "imagenet"], "5.34M"),
    ],
)
def test_cli_count(arguments, expected, capsys):
    assert main(arguments) == 0

    output = capsys.readouterr().out
    assert expected in output
    assert "multiply-adds" in output


def test_cli_count_json(capsys):
    assert main(["count", "PC_DARTS_cifar", "--dataset", "fashion-mnist", "--layers", "5", "--init-channels", "8", "--json"]) == 0

    summary = json.loads(capsys.readouterr().out)
    assert summary["input_shape"] == [1, 28, 28]
    assert (summary["layers"], summary["init_channels"]) == (5, 8)
    assert summary["params"] > summary["params_without_aux"]
