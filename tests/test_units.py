"""Unit tests of the pure pieces: planning, keys, URL policy, config, imaging sizes."""

from __future__ import annotations

import importlib.metadata as md
import io
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, features

from fetcher.config import load_config
from fetcher.farm.images import make_image
from fetcher.imaging import ImageOptions, process_image, target_size
from fetcher.netguard import NetPolicy, UrlRefused, address_problem
from fetcher.options import ConfigError
from fetcher.reader import make_key, plan_tars
from fetcher.records import Reason
from tests.conftest import ROOT, write_urls


def test_pil_is_pillow_simd() -> None:
    names = {d.metadata["Name"].lower() for d in md.distributions()}
    assert "pillow-simd" in names and "pillow" not in names
    assert ".post" in Image.__version__  # Pillow-SIMD versions carry a .postN suffix; stock Pillow's do not
    assert features.check("jpg") and features.check("webp") and features.check("zlib")


def test_plan_tars_is_global_and_deterministic() -> None:
    plans = plan_tars(25, 10, (0, 1))
    assert [(p.index, p.start, p.stop) for p in plans] == [(0, 0, 10), (1, 10, 20), (2, 20, 25)]
    shard1 = plan_tars(25, 10, (1, 2))
    assert [p.index for p in shard1] == [1]
    union = sorted(p.index for i in range(3) for p in plan_tars(95, 10, (i, 3)))
    assert union == list(range(10))


def test_keys_are_digits() -> None:
    assert make_key(12, 7, 4) == "000120007"
    assert make_key(3, 12345, 5) == "0000312345"


@pytest.mark.parametrize(
    ("addr", "problem"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.1.1", "special-purpose (100.64.0.0/10)"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("93.184.216.34", None),
    ],
)
def test_address_policy(addr: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(addr)) == problem


def test_url_policy() -> None:
    policy = NetPolicy()
    assert policy.check_url(" http://example.com/a.jpg ") == "http://example.com/a.jpg"
    for url, reason in [
        (None, Reason.MISSING_URL),
        ("", Reason.MISSING_URL),
        (42, Reason.INVALID_URL),
        ("file:///etc/passwd", Reason.UNSUPPORTED_SCHEME),
        ("http://127.0.0.1/x.jpg", Reason.BLOCKED_ADDRESS),
        ("http://[::1]/x.jpg", Reason.BLOCKED_ADDRESS),
        ("http://localhost/x.jpg", Reason.BLOCKED_ADDRESS),
        ("http://host:99999/x.jpg", Reason.INVALID_URL),
    ]:
        with pytest.raises(UrlRefused) as info:
            policy.check_url(url)
        assert info.value.reason is reason, url
    assert NetPolicy(allow_private=True).check_url("http://127.0.0.1/x.jpg")


@pytest.mark.parametrize(
    ("mode", "src", "expected"),
    [
        ("keep_ratio", (1000, 500), (512, 256)),
        ("keep_ratio_largest", (1000, 500), (256, 128)),
        ("no", (1000, 500), (1000, 500)),
        ("center_crop", (1000, 500), (256, 256)),
        ("border", (1000, 500), (256, 256)),
    ],
)
def test_process_image_sizes(mode: str, src: tuple[int, int], expected: tuple[int, int]) -> None:
    data = make_image(*src, "jpeg")
    out = process_image(data, ImageOptions(image_size=256, resize_mode=mode))
    assert out.ok, out
    assert (out.width, out.height) == expected
    assert (out.original_width, out.original_height) == src
    assert out.data is not None and Image.open(io.BytesIO(out.data)).size == expected


def test_resize_only_if_bigger_keeps_small_images() -> None:
    opts = ImageOptions(image_size=512, resize_only_if_bigger=True)
    assert target_size(300, 200, opts) == (300, 200)
    assert target_size(2000, 1000, opts) == (1024, 512)


def test_non_image_is_named_failure() -> None:
    out = process_image(b"<html>nope</html>", ImageOptions())
    assert out.reason is Reason.NOT_AN_IMAGE


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text('image-size = 512\nencode_quality = 80\nresize-mode = "center_crop"\n')
    monkeypatch.setenv("FETCHER_ENCODE_QUALITY", "70")
    cfg = load_config(["--input", "x", "--output", "y", "--config", str(toml), "--resize-mode", "no"])
    assert cfg.imaging.image_size == 512  # from TOML
    assert cfg.imaging.encode_quality == 70  # env beats TOML
    assert cfg.imaging.resize_mode == "no"  # CLI beats both
    with pytest.raises(ConfigError, match="unknown option"):
        toml.write_text("no-such-flag = 1\n")
        load_config(["--input", "x", "--output", "y", "--config", str(toml)])


def test_img2dataset_style_aliases() -> None:
    cfg = load_config(["--url_list", "x", "--output_folder", "y", "--resize_only_if_bigger=True", "--image_size", "64"])
    assert cfg.run.input == "x" and cfg.imaging.resize_only_if_bigger and cfg.imaging.image_size == 64


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fetcher", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--input", "x", "--output", "o", "--bogus"], "unrecognized arguments: --bogus"),
        (["--input", "/nonexistent/urls.parquet", "--output", "o"], "/nonexistent/urls.parquet: no such file"),
        (["--input", "{good}", "--output", "o", "--shard", "3/2"], "--shard"),
        (["--input", "{good}", "--output", "o", "--url-col", "URL"], "column 'URL' (--url-col) not found"),
        (["--output", "o"], "--input is required"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    good = write_urls(tmp_path / "good.parquet", ["http://example.com/a.jpg"])
    proc = _cli(*[a.replace("{good}", str(good)) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert lines[0].startswith("fetcher: error:")


def test_help_lists_required_flags() -> None:
    text = _cli("--help").stdout
    for flag in [
        "--shard", "--url-col", "--caption-col", "--save-columns", "--image-size", "--resize-mode",
        "--resize-only-if-bigger", "--encode-format", "--encode-quality", "--samples-per-tar", "--concurrency",
        "--processes", "--retries", "--timeout", "--allow-private-networks",
    ]:  # fmt: skip
        assert flag in text, flag


def test_bad_config_raises() -> None:
    with pytest.raises(ConfigError):
        load_config(["--input", "x", "--output", "y", "--encode-quality", "0"])


def test_readme_documents_every_flag() -> None:
    from fetcher.config import make_parser

    readme = (ROOT / "README.md").read_text()
    missing = [
        opt
        for action in make_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--version") and f"`{opt}`" not in readme
    ]
    assert not missing, f"README.md does not document: {missing}"
