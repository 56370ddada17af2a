"""fetcher: an async, polite, crash-safe image downloader that writes webdataset shards."""

__version__ = "0.1.0"
