"""The ``idarts train`` and ``idarts count`` commands.

:func:`add_train_commands` registers both on the subparsers of
:func:`idarts.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

from idarts.config import DATASET_NAMES, read_yaml_mapping

GENOTYPE_HELP = (
    "genotype: a genotype.json file, a DARTS Genotype(...) text, or a known name "
    "(see `idarts genotypes`)"
)


def add_train_commands(subparsers: Any) -> None:
    """Register the ``train`` and ``count`` subcommands on ``subparsers``."""
    from idarts.network import NETWORK_KINDS
    from idarts.train import DATASET_DEFAULTS, LR_SCHEDULES, TrainConfig

    train = subparsers.add_parser(
        "train",
        help="train a genotype from scratch and report its test accuracy, size and multiply-adds",
        description=(
            "Train a network built from a genotype from scratch. Writes config.yaml, genotype.json, "
            "metrics.csv, checkpoint.pt, last.pt, best.pt and final.json to --out. Settings left out "
            "take the dataset's defaults (the DARTS CIFAR evaluation, the PC-DARTS ImageNet "
            "evaluation, or a CPU-sized Fashion-MNIST run)."
        ),
    )
    train.add_argument("--out", required=True, help="output folder of the run")
    train.add_argument("--config", help="YAML file of training settings; options given here override it")
    train.add_argument("--resume", action="store_true", help="continue the run from the checkpoint in --out")
    train.add_argument("--quiet", action="store_true", help="hide the progress bars")
    choices = {"dataset": DATASET_NAMES, "network": NETWORK_KINDS, "lr_schedule": LR_SCHEDULES}
    dataset_fields = {name for defaults in DATASET_DEFAULTS.values() for name in defaults}
    _add_dataclass_options(train, TrainConfig, choices, dataset_fields)
    train.set_defaults(handler=command_train)

    count = subparsers.add_parser(
        "count",
        help="print the parameters and multiply-adds of the network built from a genotype",
        description=(
            "Build the evaluation network of a genotype and print its parameter counts (with and "
            "without the auxiliary head) and the multiply-adds of one image."
        ),
    )
    count.add_argument("genotype", help=GENOTYPE_HELP)
    count.add_argument(
        "--dataset", choices=DATASET_NAMES, default="cifar10",
        help="dataset that sets the input shape, the classes and the network style (default: cifar10)",
    )
    count.add_argument("--init-channels", type=int, help="channels of the first cell (default: the dataset's)")
    count.add_argument("--layers", type=int, help="number of cells (default: the dataset's)")
    count.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    count.set_defaults(handler=command_count)


def _add_dataclass_options(
    parser: argparse.ArgumentParser,
    config_class: type,
    choices: dict[str, tuple[str, ...]],
    dataset_fields: set[str],
) -> None:
    """Add one ``--field-name`` option per dataclass field; booleans get ``--x/--no-x``.

    The help of the fields in ``dataset_fields`` states that their default comes from the dataset.

    Options default to ``argparse.SUPPRESS``, so only the options given on the
    command line override the ``--config`` file and the config defaults.
    """
    group = parser.add_argument_group(f"{config_class.__name__} settings")
    hints = typing.get_type_hints(config_class)

    for item in dataclasses.fields(config_class):
        flag = "--" + item.name.replace("_", "-")
        help_text = item.metadata.get("help", "")
        if item.name in dataset_fields:
            help_text += " (default: the dataset's)"
        elif item.default == "":
            help_text += " (required unless --resume or --config sets it)"
        elif "default:" not in help_text:
            help_text += f" (default: {item.default})"
        base_type = _base_type(hints[item.name])

        if base_type is bool:
            group.add_argument(
                flag, dest=item.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )
            continue
        group.add_argument(
            flag,
            dest=item.name,
            type=_nullable(base_type),
            choices=choices.get(item.name),
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=None if item.name in choices else item.name.upper(),
        )


def _base_type(hint: Any) -> type:
    """Return ``int`` for ``int | None`` and the like; the hint itself when it is a plain type."""
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    return arguments[0] if arguments else hint


def _nullable(value_type: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else value_type(text)

    parse.__name__ = value_type.__name__
    return parse


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from idarts.train import train_field_names

    names = train_field_names()
    return {name: value for name, value in vars(args).items() if name in names}


def command_train(args: argparse.Namespace) -> int:
    """Run ``idarts train``: build the config, train, and print the final figures."""
    from idarts.complexity import format_count
    from idarts.reproducibility import resolve_device
    from idarts.train import NonFiniteLossError, TrainConfig, resume_train_config, run_training

    settings = read_yaml_mapping(args.config) if args.config else {}
    settings.update(_config_overrides(args))
    if args.resume:
        config = resume_train_config(args.out, settings)
    else:
        config = TrainConfig.from_dict(settings)

    try:
        resolve_device(config.device)
    except RuntimeError as error:
        raise ValueError(str(error)) from None

    try:
        final = run_training(config, args.out, resume=args.resume, show_progress=not args.quiet)
    except NonFiniteLossError as error:
        raise ValueError(str(error)) from None

    minutes = final["train_seconds"] / 60
    print(
        f"test accuracy {final['test_acc']:.2f}% after {final['epochs']} epochs ({minutes:.1f} min); "
        f"parameters {format_count(final['params_without_aux'])} without the auxiliary head, "
        f"{format_count(final['params'])} with it; multiply-adds {format_count(final['multiply_adds'])}"
    )
    print(f"results: {args.out}/final.json")
    return 0


def command_count(args: argparse.Namespace) -> int:
    """Run ``idarts count``: print the parameter counts and multiply-adds of a genotype's network."""
    from idarts.complexity import format_count, measure_complexity
    from idarts.datasets import get_spec
    from idarts.genotypes import load_genotype
    from idarts.network import EvalNetwork
    from idarts.train import TrainConfig

    genotype = load_genotype(args.genotype)
    overrides = {
        name: value
        for name, value in (("init_channels", args.init_channels), ("layers", args.layers))
        if value is not None
    }
    config = TrainConfig(genotype=args.genotype, dataset=args.dataset, **overrides)
    spec = get_spec(args.dataset)

    network = EvalNetwork(
        genotype,
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        init_channels=config.init_channels,
        layers=config.layers,
        auxiliary=True,
        kind=config.network,
    )
    complexity = measure_complexity(network, (spec.in_channels, spec.image_size, spec.image_size))

    if args.json:
        summary = {
            "dataset": args.dataset,
            "network": config.network,
            "init_channels": config.init_channels,
            "layers": config.layers,
            "num_classes": spec.num_classes,
            **complexity.to_dict(),
        }
        print(json.dumps(summary))
        return 0

    shape = "x".join(str(size) for size in complexity.input_shape)
    print(
        f"{config.network} network for {args.dataset}: C {config.init_channels}, "
        f"{config.layers} cells, {spec.num_classes} classes, input {shape}"
    )
    print(f"parameters without the auxiliary head: {complexity.params_without_aux:,} ({format_count(complexity.params_without_aux)})")
    print(f"parameters with the auxiliary head:    {complexity.params:,} ({format_count(complexity.params)})")
    print(f"multiply-adds per image:               {complexity.multiply_adds:,} ({format_count(complexity.multiply_adds)})")
    return 0
