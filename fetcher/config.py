"""The one configuration object: built from CLI flags, an optional TOML file and ``FETCHER_*`` env vars.

Each stage declares its own options dataclass next to its code; this module only composes them and
validates the whole once at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from fetcher import __version__, compat
from fetcher.compat import Img2datasetOptions
from fetcher.cpus import available_cpus
from fetcher.dns import DnsOptions
from fetcher.http import HttpOptions
from fetcher.imaging import ImageOptions
from fetcher.lifecycle import DurabilityOptions
from fetcher.logs import setup_logging
from fetcher.metrics import MonitorOptions
from fetcher.options import ConfigError, add_arguments, apply_defaults, build, dest, env_values, opt, unknown_env
from fetcher.reader import InputOptions
from fetcher.scheduler import SchedulerOptions
from storage.output import OutputOptions

log = logging.getLogger(__name__)


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


IMAGING_POOLS = ("threads", "processes")


@dataclass(frozen=True)
class RunOptions:
    """Where output goes and how the process runs."""

    input: str = opt(
        "--input",
        "",
        "input file, directory (sorted) or glob: parquet, jsonl, csv, tsv, txt (.gz ok); local or fsspec URL",
        aliases=("--url_list",),
        metavar="PATH",
        required=True,
    )
    output: str = opt(
        "--output",
        "",
        "output directory or object-store URL (s3://…)",
        aliases=("--output_folder",),
        metavar="DIR",
        required=True,
    )
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
        "--processes",
        0,
        "engine processes, each fetching, resizing and writing whole tars (0 = one per available core,"
        " at most one per tar)",
        aliases=("--processes_count",),
    )
    imaging_workers: int = opt(
        "--imaging-workers", 0, "imaging workers per engine process (0 = available cores / engines)"
    )
    imaging_pool: str = opt(
        "--imaging-pool",
        "threads",
        "imaging workers as threads of the engine (no copies; small images on its loop) or processes"
        " (isolated: --worker-max-memory)",
        choices=IMAGING_POOLS,
    )
    max_bytes_in_flight: int = opt(
        "--max-bytes-in-flight", 128 * 2**20, "body bytes held (read or waiting for imaging); reserved before read"
    )

    @property
    def shard_pair(self) -> tuple[int, int]:
        return parse_shard(resolve_shard(self.shard, self.shard_index_env))

    def validate(self, need_input: bool = True) -> None:
        """Check ranges; ``need_input`` False for modes that only look at the output."""
        if need_input and not self.input:
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
        if self.imaging_workers < 0:
            raise ConfigError("--imaging-workers must be >= 0")
        if self.max_bytes_in_flight < 1 << 20:
            raise ConfigError("--max-bytes-in-flight must be at least 1 MiB")

    def engine_count(self, tars: int) -> int:
        """Engine processes for ``tars`` tars to do: as asked (or one per core), never more than tars."""
        return max(1, min(self.processes or available_cpus(), tars))

    @property
    def worker_count(self) -> int:
        """Imaging workers of one engine process."""
        return self.imaging_workers or max(1, available_cpus() // max(1, self.processes))


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
    Img2datasetOptions,
]
_TITLES = {
    RunOptions: "run: what to read, where to write, how many processes",
    InputOptions: "input columns and filters",
    OutputOptions: "output format",
    HttpOptions: "http: timeouts, limits, network policy",
    DnsOptions: "dns: resolver, caches",
    SchedulerOptions: "politeness and retries (per host)",
    ImageOptions: "imaging: resize, encode, refuse",
    MonitorOptions: "monitoring and progress",
    DurabilityOptions: "stopping, disk and memory guards, resuming",
    Img2datasetOptions: "img2dataset flags without a fetcher twin (mapped or explained; README: img2dataset flags)",
}
_EPILOG = """\
flags marked BYTES take a plain byte count; --min-free-disk and --worker-max-memory take 500M / 2G.
every option can also come from --config FILE.toml (key = flag name) or FETCHER_<FLAG_NAME> variables.

examples:
  python -m fetcher --input urls.parquet --output out/
  python -m fetcher --input 'laion/part-*.parquet' --url-col URL --caption-col TEXT --output s3://bucket/laion \\
      --image-size 512 --resize-mode center_crop --shard 3/16
  python -m fetcher --url_list data --input_format parquet --url_col URL --caption_col TEXT \\
      --output_format files --output_folder out --thread_count 128 --image_size 1024   # img2dataset spelling
  python -m fetcher metadata out/        # rebuild wids-index.json / metadata.parquet of an output

exit codes: 0 done, 2 bad flags or input, 75 I/O error, 130/143 stopped by a signal.
README.md has the full guide, the img2dataset flag table and the metrics reference."""
_USAGE = """python -m fetcher --input PATH --output DIR [options]
       python -m fetcher metadata OUTPUT"""


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
    img2dataset: Img2datasetOptions
    dns: DnsOptions = field(default_factory=DnsOptions)

    def validate(self) -> None:
        self.run.validate(need_input=not self.output.print_simpletuner_config)
        for part in (
            self.input,
            self.output,
            self.http,
            self.scheduler,
            self.imaging,
            self.monitor,
            self.durability,
            self.img2dataset,
            self.dns,
        ):
            part.validate()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2: users grep logs of many shards.
        self.exit(2, f"fetcher: error: {message}\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--image-size, --image_size N`` (the value once, after every spelling), wide enough columns."""

    def __init__(self, prog: str) -> None:
        width = min(shutil.get_terminal_size().columns, 120) - 2
        super().__init__(prog, max_help_position=38, width=width)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(action.option_strings) + " " + value


def make_parser() -> argparse.ArgumentParser:
    """The full ``python -m fetcher`` argument parser."""
    parser = _Parser(
        prog="python -m fetcher",
        usage=_USAGE,
        description="Download image URL lists (parquet, jsonl, csv, txt) into resized webdataset tars, image "
        "folders or parquet, politely per host, resumably, with a results table row for every input row.\n\n"
        "subcommands:\n  metadata OUTPUT       rebuild an output's wids-index.json and metadata.parquet",
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
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
    setup_logging(getattr(ns, dest(MonitorOptions, "log_format")))
    for warning in unknown_env(OPTION_CLASSES):
        log.warning("%s", warning)
    compat.apply(ns)
    cfg = Config(
        run=build(RunOptions, ns),
        input=build(InputOptions, ns),
        output=build(OutputOptions, ns),
        http=build(HttpOptions, ns),
        scheduler=build(SchedulerOptions, ns),
        imaging=build(ImageOptions, ns),
        monitor=build(MonitorOptions, ns),
        durability=build(DurabilityOptions, ns),
        img2dataset=build(Img2datasetOptions, ns),
        dns=build(DnsOptions, ns),
    )
    cfg.validate()
    cpus = available_cpus()
    if cfg.run.processes > 2 * cpus:
        log.warning(
            "--processes %d but this process may use %d CPU(s) (affinity and cgroup quota): the engines will "
            "share them; 0 (the default) starts one per usable CPU",
            cfg.run.processes,
            cpus,
        )
    if cfg.run.imaging_pool == "threads" and cfg.durability.worker_max_memory != DurabilityOptions().worker_max_memory:
        log.warning(
            "--worker-max-memory caps imaging worker processes: with --imaging-pool threads (the default) it"
            " has no effect; add --imaging-pool processes for the cap (--max-image-pixels bounds every image)"
        )
    return cfg
