"""The one configuration object: built from CLI flags, an optional TOML file and ``FETCHER_*`` env vars.

Each stage declares its own options dataclass next to its code; this module only composes them and
validates the whole once at start.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from fetcher import __version__
from fetcher.dns import DnsOptions
from fetcher.http import HttpOptions
from fetcher.imaging import ImageOptions
from fetcher.lifecycle import DurabilityOptions
from fetcher.metrics import MonitorOptions
from fetcher.options import ConfigError, add_arguments, apply_defaults, build, env_values, opt
from fetcher.reader import InputOptions
from fetcher.scheduler import SchedulerOptions
from storage.output import OutputOptions


def resolve_shard(text: str, index_env: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace a ``$NAME`` shard index by that environment variable (``$INDEX``: the --shard-index-env one)."""
    if not text.startswith("$"):
        return text
    name, sep, count = text[1:].partition("/")
    var = index_env if name == "INDEX" else name
    value = (os.environ if environ is None else environ).get(var)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs the environment variable {var}, which is not set")
    return f"{value.strip()}{sep}{count}"


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/N`` (``$INDEX/N`` style values are resolved before this, by resolve_shard)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/N such as 3/16, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text!r} out of range: need 0 <= i < N")
    return i, n


@dataclass(frozen=True)
class RunOptions:
    """Where output goes and how the process runs."""

    input: str = opt(
        "--input",
        "",
        "input file, directory (sorted) or glob: parquet, jsonl, csv, tsv, txt (.gz ok); local or fsspec URL",
        aliases=("--url_list",),
    )
    output: str = opt("--output", "", "output directory or object-store URL (s3://…)", aliases=("--output_folder",))
    shard: str = opt(
        "--shard", "0/1", "take tars k with k %% N == i (i/N; $INDEX/N reads i from --shard-index-env)", metavar="I/N"
    )
    shard_index_env: str = opt(
        "--shard-index-env", "JOB_COMPLETION_INDEX", "environment variable that --shard $INDEX/N reads", metavar="VAR"
    )
    samples_per_tar: int = opt(
        "--samples-per-tar", 10000, "input rows per output tar", aliases=("--number_sample_per_shard",)
    )
    processes: int = opt(
        "--processes", 0, "imaging worker processes (0 = one per core)", aliases=("--processes_count",)
    )
    max_bytes_in_flight: int = opt(
        "--max-bytes-in-flight", 128 * 2**20, "downloaded bytes waiting for imaging before fetching pauses"
    )

    @property
    def shard_pair(self) -> tuple[int, int]:
        return parse_shard(resolve_shard(self.shard, self.shard_index_env))

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("--input is required")
        if not self.output:
            raise ConfigError("--output is required")
        try:
            self.shard_pair  # noqa: B018 (validates)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"--shard: {exc}") from None
        if self.samples_per_tar < 1:
            raise ConfigError("--samples-per-tar must be >= 1")
        if self.processes < 0:
            raise ConfigError("--processes must be >= 0")
        if self.max_bytes_in_flight < 1 << 20:
            raise ConfigError("--max-bytes-in-flight must be at least 1 MiB")

    @property
    def worker_count(self) -> int:
        return self.processes or (os.cpu_count() or 1)


OPTION_CLASSES: list[type] = [
    RunOptions,
    InputOptions,
    OutputOptions,
    HttpOptions,
    DnsOptions,
    SchedulerOptions,
    ImageOptions,
    MonitorOptions,
    DurabilityOptions,
]
_TITLES = {
    RunOptions: "run",
    InputOptions: "input",
    OutputOptions: "output",
    HttpOptions: "http",
    DnsOptions: "dns",
    SchedulerOptions: "scheduling",
    ImageOptions: "imaging",
    MonitorOptions: "monitoring",
    DurabilityOptions: "durability",
}


@dataclass(frozen=True)
class Config:
    """Everything a run needs, validated."""

    run: RunOptions
    input: InputOptions
    output: OutputOptions
    http: HttpOptions
    scheduler: SchedulerOptions
    imaging: ImageOptions
    monitor: MonitorOptions
    durability: DurabilityOptions
    dns: DnsOptions = field(default_factory=DnsOptions)

    def validate(self) -> None:
        for part in (
            self.run,
            self.input,
            self.output,
            self.http,
            self.scheduler,
            self.imaging,
            self.monitor,
            self.durability,
            self.dns,
        ):
            part.validate()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2: users grep logs of many shards.
        self.exit(2, f"fetcher: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    """The full ``python -m fetcher`` argument parser."""
    parser = _Parser(
        prog="python -m fetcher",
        description="Download image URL lists into resized webdataset shards.",
    )
    parser.add_argument("--version", action="version", version=f"fetcher {__version__}")
    parser.add_argument("--config", metavar="TOML", help="read option defaults from a TOML file")
    for cls in OPTION_CLASSES:
        add_arguments(parser, cls, _TITLES[cls])
    return parser


def load_config(argv: list[str] | None = None) -> Config:
    """Build and validate the Config from argv, a TOML file and the environment.

    Precedence: command line > environment > TOML file > built-in defaults.
    Raises ConfigError (or SystemExit(2) from argparse) on bad input.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            with open(pre.config, "rb") as fh:
                table = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"--config {pre.config}: {exc}") from None
        apply_defaults(parser, OPTION_CLASSES, table, pre.config)
    apply_defaults(parser, OPTION_CLASSES, env_values(OPTION_CLASSES), "environment")
    ns = parser.parse_args(argv)
    cfg = Config(
        run=build(RunOptions, ns),
        input=build(InputOptions, ns),
        output=build(OutputOptions, ns),
        http=build(HttpOptions, ns),
        scheduler=build(SchedulerOptions, ns),
        imaging=build(ImageOptions, ns),
        monitor=build(MonitorOptions, ns),
        durability=build(DurabilityOptions, ns),
        dns=build(DnsOptions, ns),
    )
    cfg.validate()
    return cfg
