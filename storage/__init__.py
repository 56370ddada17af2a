"""Output writers and file-system access for fetcher (local now; object stores behind the same calls)."""
