"""The seed-style baseline: what users write today, with a resize added.

Like the photo-concept-bucket ``download.py``: a ThreadPoolExecutor over the rows, ``requests.get``
per URL, a full PIL decode, a LANCZOS resize (short side to ``--image-size``, as fetcher's
``keep_ratio``), one ``.jpg`` + ``.txt`` file per row. Runs with the stock-Pillow venv's python
(bench/stockenv.py), so it must import nothing from fetcher.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import pyarrow.parquet as pq
import requests
from PIL import Image


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    k = size / min(w, h)
    return img.resize((max(1, round(w * k)), max(1, round(h * k))), resample=Image.Resampling.LANCZOS)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--quality", type=int, default=95)
    args = p.parse_args()
    rows = pq.read_table(args.input, columns=["url", "caption"]).to_pylist()
    os.makedirs(args.output, exist_ok=True)

    def download_and_save(item: tuple[int, dict[str, str]]) -> bool:
        i, row = item
        if not row["url"].split("/")[2].startswith("127."):
            raise SystemExit("baseline: loopback URLs only")
        try:
            resp = requests.get(row["url"], timeout=30)
            if resp.status_code != 200:
                return False
            img = resize_short_side(Image.open(BytesIO(resp.content)), args.image_size)
            img.save(os.path.join(args.output, f"{i:09d}.jpg"), quality=args.quality)
            with open(os.path.join(args.output, f"{i:09d}.txt"), "w") as fh:
                fh.write(row["caption"])
            return True
        except Exception as e:
            print(f"failed {i}: {type(e).__name__}: {e}")
            return False

    with ThreadPoolExecutor() as executor:
        ok = sum(executor.map(download_and_save, enumerate(rows)))
    print(f"baseline: {ok} of {len(rows)} saved")


if __name__ == "__main__":
    main()
