"""ustar member headers, packed directly (the hot path of writing a sample)."""

from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE


def ustar_header(name: str, size: int, mtime: int) -> bytes:
    """The 512-byte ustar header of a regular file, as ``tarfile.TarInfo.tobuf`` writes it.

    tarfile builds it field by field in Python (the largest cost of writing a sample, measured with
    py-spy in the bench); our members are short ASCII names with fixed metadata, so a direct pack is enough.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, mtime, 0o644
        return info.tobuf(tarfile.USTAR_FORMAT)
    head = (
        raw.ljust(100, b"\0")
        + b"0000644\0"  # mode
        + b"0000000\0" * 2  # uid, gid
        + b"%011o\0" % size
        + b"%011o\0" % mtime
        + b" " * 8  # checksum field counts as spaces while summing
        + b"0"  # regular file
        + b"\0" * 100  # linkname
        + b"ustar\x0000"
        + b"\0" * 64  # uname, gname
        + b"\0" * 16  # devmajor, devminor: empty for regular files
    ).ljust(BLOCK, b"\0")
    chksum = b"%06o\0 " % sum(head)
    return head[:148] + chksum + head[156:]
