"""What a run will do, worked out (and validated) before any network traffic: the inputs, this shard's
tars, which of them are already complete, and which rows of each this run still has to do."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from fetcher.config import Config
from fetcher.fetchers import LocalRoots, local_roots
from fetcher.options import ConfigError
from fetcher.reader import InputFile, TarPlan, iter_rows, open_inputs, plan_tars
from fetcher.readers import reader
from fetcher.records import InputRow
from fetcher.retry_failed import RetryPlan, plan_retry
from fetcher.runrecord import claim_output
from fetcher.summary import RunStats
from fetcher.tarfeed import TarFeed
from storage.backend import is_remote
from storage.layout import ShardFiles
from storage.output import Output


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, worked out (and validated) before any network traffic."""

    cfg: Config
    files: list[InputFile]
    tars: list[TarPlan]
    todo: list[TarPlan]
    output: Output
    retries: dict[int, RetryPlan] = field(default_factory=dict)  # --retry-failed: finished tars to revisit
    local_roots: LocalRoots | None = None  # rows are local images in these folders/tars (LocalFetch)
    feed: TarFeed | None = None  # a box engine's tars: taken from the box's queue (else ``todo`` in order)

    def rows_of(self, tar: TarPlan) -> int:
        """Rows this run has to finish in ``tar`` (all of them, or those --retry-failed revisits)."""
        return len(self.retries[tar.index].retry_rows) if tar.index in self.retries else tar.size

    def new_stats(self) -> RunStats:
        """Counters for this plan: the rows it has to finish (a box engine's: those of the tars it has
        taken, none yet), the tars it covers."""
        rows = 0 if self.feed is not None else sum(self.rows_of(t) for t in self.todo)
        return RunStats(total_rows=rows, tars_total=len(self.tars), tars_skipped=len(self.tars) - len(self.todo))

    def rows_to_do(self, tar: TarPlan, done: set[int]) -> Iterator[InputRow]:
        """The rows of ``tar`` this run does: not final in its checkpoint (``done``) and, when a finished
        tar is revisited (--retry-failed), only its rows to retry. Raises InputDataError."""
        retry = self.retries.get(tar.index)
        cfg = self.cfg
        for row in iter_rows(self.files, tar, cfg.input, cfg.run.samples_per_tar, cfg.imaging.verify_hash):
            if (retry is None or row.row_in_tar in retry.retry_rows) and row.row_in_tar not in done:
                yield row


def prepare(cfg: Config, claim: bool = True, files: list[InputFile] | None = None) -> RunPlan:
    """Open inputs (unless given the ``files`` a box parent opened), plan this shard's tars and find those
    already complete; ``claim``: check (or write) the output's run record too. Raises ConfigError."""
    if files is None:
        files = open_inputs(cfg.run.input, cfg.input, cfg.imaging.verify_hash)
    roots = local_roots([(f.path, reader(f.source.fmt)) for f in files], cfg.input.images_from)
    total = sum(f.num_rows for f in files)
    tars = plan_tars(total, cfg.run.samples_per_tar, cfg.run.shard_pair)
    try:
        output = Output(cfg.run.output, cfg.output, cfg.input.save_list, cfg.imaging.hash_column)
    except OSError as exc:  # /proc/x, an existing file, no permission: a bad --output, not a crash
        why = exc.strerror or exc
        raise ConfigError(f"--output {cfg.run.output}: cannot use it as the output folder ({why})") from None
    if cfg.durability.retry_failed and is_remote(cfg.run.output):
        raise ConfigError("--retry-failed rewrites finished tars in place: use it with a local --output")
    if claim:  # a box's engines plan after their parent claimed the output: checking again is redundant
        claim_output(cfg, files, output)  # a rerun that would make other tars stops here (storage.manifest)
    todo: list[TarPlan] = []
    retries: dict[int, RetryPlan] = {}
    for t in tars:
        if not output.is_complete(t.index):
            todo.append(t)
        elif cfg.durability.retry_failed:
            retry = plan_retry(ShardFiles(output.local_root, t.index), t, cfg.input.save_list, cfg.output.format)
            if retry is not None:
                retries[t.index] = retry
                todo.append(t)
    return RunPlan(cfg=cfg, files=files, tars=tars, todo=todo, output=output, retries=retries, local_roots=roots)
