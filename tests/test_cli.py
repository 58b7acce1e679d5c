"""The idarts command line: search, resume, show, genotypes, errors."""

import csv
import subprocess
import sys

import pytest
import yaml

from idarts.cli import main

TINY_SEARCH = [
    "search",
    "--dataset", "fashion-mnist",
    "--subset", "128",
    "--batch-size", "16",
    "--layers", "3",
    "--init-channels", "4",
    "--partial-k", "2",
    "--warmup-epochs", "1",
    "--device", "cpu",
    "--quiet",
]


def read_epochs(path):
    with path.open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_search_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_SEARCH, "--epochs", "2", "--threshold", "0.2", "--out", str(out)]) == 0

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["threshold"] == 0.2
    assert config["partial_k"] == 2
    assert read_epochs(out / "metrics.csv") == [1, 2]
    assert (out / "genotype.json").exists()
    assert "genotype.json" in capsys.readouterr().out


def test_search_resume_finishes_run(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY_SEARCH, "--epochs", "2", "--out", str(out)]) == 0
    (out / "genotype.json").unlink()

    assert main(["search", "--out", str(out), "--resume", "--quiet"]) == 0

    assert read_epochs(out / "metrics.csv") == [1, 2]
    assert (out / "genotype.json").exists()


def test_search_resume_rejects_changed_setting(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY_SEARCH, "--epochs", "1", "--out", str(out)]) == 0
    assert main(["search", "--out", str(out), "--resume", "--threshold", "0.9"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_search_config_file_and_override(tmp_path):
    config_path = tmp_path / "search.yaml"
    config_path.write_text(yaml.safe_dump({"threshold": 0.7, "seed": 5, "epochs": 1}))
    out = tmp_path / "run"
    assert main([*TINY_SEARCH, "--config", str(config_path), "--seed", "6", "--out", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["threshold"] == 0.7
    assert saved["seed"] == 6


def test_invalid_partial_k_lists_valid_values(tmp_path, capsys):
    code = main([*TINY_SEARCH, "--partial-k", "3", "--out", str(tmp_path / "run")])
    assert code == 2
    error = capsys.readouterr().err
    assert "partial_k=3" in error
    assert "[1, 2, 4]" in error
    assert not (tmp_path / "run").exists()


def test_missing_data_dir_is_reported(tmp_path, capsys):
    code = main([*TINY_SEARCH, "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "empty" in capsys.readouterr().err


def test_unknown_mode_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*TINY_SEARCH, "--mode", "darts", "--out", str(tmp_path / "run")])
    assert "invalid choice" in capsys.readouterr().err


def test_show_known_genotype_with_png(tmp_path, capsys):
    png = tmp_path / "cell.png"
    assert main(["show", "PC_DARTS_cifar", "--png", str(png), "--darts"]) == 0
    output = capsys.readouterr().out
    assert "sep_conv_5x5" in output
    assert "Genotype(normal=" in output
    assert png.stat().st_size > 1000


def test_show_unknown_genotype_fails(capsys):
    assert main(["show", "NOT_A_CELL"]) == 2
    assert "DARTS_V2" in capsys.readouterr().err


def test_genotypes_lists_published(capsys):
    assert main(["genotypes"]) == 0
    output = capsys.readouterr().out
    for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image"):
        assert name in output


def test_console_script_help_runs():
    result = subprocess.run(
        [sys.executable, "-m", "idarts.cli", "search", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--warmup-epochs" in result.stdout
    assert "--partial-k" in result.stdout
