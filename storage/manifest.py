"""The run record of an output folder: what its tars are made from, so a rerun that would make them
differently is refused instead of silently mixing two runs.

Tar ``k`` holds input rows ``[k*S, (k+1)*S)`` processed with the run's options, and a rerun skips
every tar with a marker. A rerun with another S, other input files (30 rows prepended shift every
row), other columns or image options would add tars that disagree with the finished ones; each
such rerun exited 0. ``_fetcher_run.json`` is written once, atomically, when an output is first
used; every later start compares against it and stops with one line naming the first difference.

Several pods (``--shard i/N``) share a folder: the first to start writes the record (exclusive
create on local disks, so exactly one wins), the others compare against it. The shard itself is
not recorded: tar ``k``'s contents never depend on which worker writes it. On an object store the
record is written and read back (a PUT is atomic per object); two simultaneous first starts with
different options are then caught by whichever reads the other's record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from storage.backend import Backend, LocalBackend, unique_tmp

RUN_FILE = "_fetcher_run.json"
VERSION = 1
# What claim() says when it adopts a folder written before run records existed (worth a warning).
ADOPTED = "output written without a run record (older fetcher?): assumed to match, recorded this run"


class RunMismatch(Exception):
    """This run would not make the same tars as the one recorded in the output; one-line message."""


@dataclass(frozen=True)
class RunRecord:
    """Inputs (ordered: ``name``, ``rows``, ``bytes`` when known) and the options that shape tars."""

    inputs: list[dict[str, Any]]
    options: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # informative only (never compared)

    def to_bytes(self) -> bytes:
        doc = {"version": VERSION, "inputs": self.inputs, "options": self.options, **self.extra}
        return (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunRecord:
        doc = json.loads(data)
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("inputs"), list)
            or not isinstance(doc.get("options"), dict)
        ):
            raise ValueError("not a fetcher run record")
        return cls(inputs=doc["inputs"], options=doc["options"])


def differences(old: RunRecord, new: RunRecord) -> list[str]:
    """What differs, in words, most telling first (empty when this run makes the same tars)."""
    out: list[str] = []
    for key in sorted(set(old.options) | set(new.options)):
        if key in old.options and key in new.options and old.options[key] != new.options[key]:
            out.append(f"{key} was {old.options[key]!r}, now {new.options[key]!r}")
    before, now = sum(int(f.get("rows", 0)) for f in old.inputs), sum(int(f.get("rows", 0)) for f in new.inputs)
    if before != now:
        out.append(f"the input had {before} rows, now {now}")
    names_before, names_now = [f.get("name") for f in old.inputs], [f.get("name") for f in new.inputs]
    if names_before != names_now:
        out.append(f"the input files were {_short(names_before)}, now {_short(names_now)}")
    else:
        for a, b in zip(old.inputs, new.inputs, strict=True):
            for key in ("rows", "bytes"):
                if a.get(key) is not None and b.get(key) is not None and a[key] != b[key]:
                    out.append(f"input {a['name']} had {a[key]} {key}, now {b[key]}")
    return out


def _short(names: list[Any]) -> str:
    return ", ".join(map(str, names[:3])) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def claim(backend: Backend, record: RunRecord, new_run: bool = False) -> str:
    """Compare with (or write) the output's run record. Returns what happened, for the log.

    ``new_run`` replaces a differing record, but only in a folder that holds nothing else: two runs
    are never mixed. Raises RunMismatch (one line) when this run would make other tars; OSError
    when the folder cannot be written.
    """
    where = backend.root
    names = [n for n in backend.listdir() if n != RUN_FILE]
    if backend.exists(RUN_FILE):
        try:
            old = RunRecord.from_bytes(backend.read_bytes(RUN_FILE))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RunMismatch(f"--output {where}: unreadable {RUN_FILE} ({exc}); it is not a fetcher output") from None
        diffs = differences(old, record)
        if not diffs:
            return "resuming: inputs and options match the run record"
        if not new_run:
            more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
            raise RunMismatch(
                f"--output {where} holds another run: {diffs[0]}{more}; rerun with the same inputs and options, "
                "or write to a new folder"
            )
        if names:
            raise RunMismatch(
                f"--new-run: --output {where} holds files of another run ({_short(names)}); "
                "use an empty or new folder, two runs are never mixed"
            )
        backend.write_bytes(RUN_FILE, record.to_bytes())
        return "new run: replaced the run record of a run that wrote nothing"
    if names and new_run:
        raise RunMismatch(f"--new-run: --output {where} is not empty ({_short(names)}); use an empty or new folder")
    if _create(backend, record.to_bytes()):
        return ADOPTED if names else "new output: recorded this run"
    return claim(backend, record, new_run=False)  # another worker wrote it first: compare with theirs


def _create(backend: Backend, data: bytes) -> bool:
    """Write the record unless one exists; False when another process's record won."""
    if isinstance(backend, LocalBackend):
        path = os.path.join(backend.root, RUN_FILE)
        tmp = unique_tmp(path)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # exclusive and atomic: exactly one first start wins
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    backend.write_bytes(RUN_FILE, data)
    return True
