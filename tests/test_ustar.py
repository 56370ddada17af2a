"""The packed ustar headers match tarfile's byte for byte, and TarSink archives read back everywhere."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import webdataset as wds
from hypothesis import given
from hypothesis import strategies as st

from storage.tarwriter import TarSink
from storage.ustar import ustar_header


def _tarfile_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT)


@given(
    name=st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=100),
    size=st.integers(min_value=0, max_value=8**11 - 1),
    mtime=st.integers(min_value=0, max_value=2**33 - 1),
)
def test_header_matches_tarfile(name: str, size: int, mtime: int) -> None:
    assert ustar_header(name, size, mtime) == _tarfile_header(name, size, mtime)


def test_tarsink_archive_is_what_tarfile_writes(tmp_path: Path) -> None:
    samples = {
        f"{i:09d}": {"jpg": bytes([i % 256]) * (i * 37 % 1500), "txt": f"caption {i}".encode()} for i in range(50)
    }
    sink = TarSink(str(tmp_path / "fast.tar"))
    sink._mtime = 1_700_000_000
    for key, members in samples.items():
        sink.add_sample(key, members)
    sink.commit()
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
                tf.addfile(info, io.BytesIO(data))
    assert (tmp_path / "fast.tar").read_bytes() == ref.getvalue()
    got = {s["__key__"]: s for s in wds.WebDataset(str(tmp_path / "fast.tar"), shardshuffle=False)}
    assert sorted(got) == sorted(samples)
    assert all(got[k]["jpg"] == samples[k]["jpg"] and got[k]["txt"] == samples[k]["txt"] for k in samples)
