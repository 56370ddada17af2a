"""A local image host farm on loopback addresses: sample images and fault paths.

Used by ``make run``, the tests and the benchmarks; it never binds outside 127.0.0.0/8.
"""

from fetcher.farm.images import make_image
from fetcher.farm.server import Farm, FarmThread

__all__ = ["Farm", "FarmThread", "make_image"]
