"""Imported only by the multiprocessing forkserver (as a preload module): it dies with the fetcher
process that started it (see :mod:`fetcher.deathsig`)."""

from fetcher.deathsig import die_with_parent

die_with_parent()
