"""The ``idarts`` command line: search, inspect genotypes, and the later layers' commands."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

from idarts.config import DATASET_NAMES, SEARCH_MODES, SearchConfig, read_yaml_mapping
from idarts.runner import RunFolderError
from idarts.search import NonFiniteLossError

logger = logging.getLogger("idarts")

CHOICES = {"dataset": DATASET_NAMES, "mode": SEARCH_MODES}


def add_config_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Add one ``--field-name`` option per field of a config dataclass.

    Options default to ``argparse.SUPPRESS`` so that only the options given on
    the command line override the ``--config`` file and the dataclass defaults.
    """
    group = parser.add_argument_group(f"{config_class.__name__} settings")
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        flag = "--" + item.name.replace("_", "-")
        help_text = item.metadata.get("help", "")
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        if "default" not in help_text:
            help_text = f"{help_text} (default: {default})"

        value_type, nargs = _argparse_type(hints[item.name])
        group.add_argument(
            flag,
            dest=item.name,
            type=value_type,
            nargs=nargs,
            choices=CHOICES.get(item.name),
            default=argparse.SUPPRESS,
            help=help_text,
            metavar=item.name.upper() if item.name not in CHOICES else None,
        )


def _argparse_type(hint: Any) -> tuple[Any, Any]:
    """Map a field's type hint to an argparse ``type`` and ``nargs``."""
    origin = typing.get_origin(hint)
    arguments = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if origin is tuple:
        return arguments[0], len(arguments)
    if arguments and origin is not None:
        return _optional(arguments[0]), None
    return hint, None


def _optional(value_type: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null"):
            return None
        if value_type is bool:
            return _parse_bool(text)
        return value_type(text)

    parse.__name__ = value_type.__name__
    return parse


def _parse_bool(text: str) -> bool:
    values = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    try:
        return values[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid boolean {text!r}: use true or false") from None


def config_overrides(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """Return the config fields that were given on the command line."""
    names = {item.name for item in dataclasses.fields(config_class)}
    return {name: value for name, value in vars(args).items() if name in names}


def build_search_config(args: argparse.Namespace) -> SearchConfig:
    """Merge the ``--config`` file with the command-line options into a ``SearchConfig``."""
    settings = read_yaml_mapping(args.config) if args.config else {}
    settings.update(config_overrides(args, SearchConfig))
    return SearchConfig.from_dict(settings)


def command_search(args: argparse.Namespace) -> int:
    from idarts.runner import resume_config, run_search

    if args.resume:
        config = resume_config(args.out, config_overrides(args, SearchConfig))
    else:
        config = build_search_config(args)

    metrics = run_search(config, args.out, resume=args.resume, show_progress=not args.quiet)
    if metrics:
        print(
            f"final epoch {metrics['epoch']}: valid_acc {metrics['valid_acc']:.2f}%, "
            f"{metrics['backtracked_edges']} backtracked edges"
        )
    print(f"genotype: {args.out}/genotype.json")
    return 0


def command_show(args: argparse.Namespace) -> int:
    from idarts.genotypes import load_genotype
    from idarts.visualize import genotype_to_text, plot_genotype

    genotype = load_genotype(args.genotype)
    print(genotype_to_text(genotype))
    if args.darts:
        print(genotype.to_darts_text())
    if args.png:
        plot_genotype(genotype, args.png)
        print(f"cell diagram written to {args.png}")
    return 0


def command_genotypes(args: argparse.Namespace) -> int:
    from idarts.genotypes import KNOWN_GENOTYPES

    for name, genotype in KNOWN_GENOTYPES.items():
        print(f"{name}: {genotype.to_darts_text()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the ``idarts`` argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="idarts",
        description="IDARTS: partial-channel differentiable architecture search with alpha backtracking.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    search = subparsers.add_parser(
        "search",
        help="run an IDARTS or PC-DARTS search",
        description="Run an architecture search and write its metrics, genotype and checkpoint to --out.",
    )
    search.add_argument("--out", required=True, help="output folder of the run")
    search.add_argument("--config", help="YAML file of search settings; options given here override it")
    search.add_argument(
        "--resume", action="store_true", help="continue the search from the checkpoint in --out"
    )
    search.add_argument("--quiet", action="store_true", help="hide the progress bars")
    add_config_options(search, SearchConfig)
    search.set_defaults(handler=command_search)

    show = subparsers.add_parser(
        "show", help="print or draw a genotype", description="Print a genotype as a table, or draw it."
    )
    show.add_argument(
        "genotype", help="a genotype.json file, a DARTS text form, or a known name (see `idarts genotypes`)"
    )
    show.add_argument("--png", help="also draw both cells into this PNG file")
    show.add_argument("--darts", action="store_true", help="also print the DARTS text form")
    show.set_defaults(handler=command_show)

    genotypes = subparsers.add_parser("genotypes", help="list the published genotypes shipped with idarts")
    genotypes.set_defaults(handler=command_genotypes)

    _add_optional_commands(subparsers)
    return parser


def _add_optional_commands(subparsers: Any) -> None:
    """Register the commands of modules that add their own subcommands."""
    for module_name, function_name in (
        ("idarts.cli_train", "add_train_commands"),
        ("idarts.cli_sweep", "add_sweep_commands"),
        ("idarts.cli_report", "add_report_commands"),
    ):
        try:
            module = __import__(module_name, fromlist=[function_name])
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        getattr(module, function_name)(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``idarts`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            return args.handler(args)
    except (FileNotFoundError, ValueError, RunFolderError, NonFiniteLossError) as error:
        logger.debug("command failed", exc_info=True)
        print(f"idarts {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
