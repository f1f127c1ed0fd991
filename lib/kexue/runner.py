"""Run a chapter through papermill: at a scale, with checked parameters, optionally writing the
outputs back into the committed notebook (volatile metadata stripped).

    kexue-run bert-init-std                       # full scale, outputs written back
    kexue-run bert-init-std --scale smoke --no-write-back
    kexue-run xavier-averaging -p seed 1 --no-write-back

The tests call :func:`run_chapter` for every chapter at smoke scale (``tests/chapters``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import SCALES, book, check_scale
from .results import RegistrationError, require_registered


class ParameterError(ValueError):
    """A parameter the chapter's ``parameters`` cell does not declare."""


class OutsideCheckoutError(ValueError):
    """A write-back into a checkout of the book other than the one holding the working directory."""


def checkout_of(path: Path) -> Path | None:
    """The checkout of the book (a folder with ``_toc.yml`` and ``lib/kexue``) that holds ``path``,
    searched upwards from ``path`` only: unlike :func:`kexue.book.repo_root`, never the installed
    library's own checkout."""
    path = Path(path).resolve()
    for p in (path, *path.parents):
        if (p / "_toc.yml").is_file() and (p / "lib" / "kexue").is_dir():
            return p
    return None


def kernel_config(socket_dir: str | Path | None = None):
    """Configuration of the kernel papermill starts: IPC transport where the platform has it, so that
    ipykernel neither warns "Kernel is running over TCP without encryption" nor opens TCP ports; TCP
    on Windows, which has no IPC transport. The Unix sockets go in ``socket_dir`` (an absolute path:
    jupyter_client's default is a relative ``kernel-ipc-N`` in the working directory, which would put
    sockets into the chapter's folder and let two runs there collide); default: a fresh temporary
    folder, which the caller removes."""
    from traitlets.config import Config

    c = Config()
    if os.name != "nt":
        socket_dir = Path(socket_dir) if socket_dir else Path(tempfile.mkdtemp(prefix="kexue-kernel-"))
        c.KernelManager.transport = "ipc"
        c.KernelManager.ip = str(socket_dir.resolve() / "kernel")
    return c


def declared_parameters(nb_path: Path) -> dict:
    """Names (and defaults) declared in the chapter's cell tagged ``parameters``."""
    import papermill as pm
    params = pm.inspect_notebook(str(nb_path))
    if not params:
        raise ParameterError(f"{nb_path.name} has no cell tagged 'parameters'")
    return params


def check_parameters(nb_path: Path, parameters: dict) -> None:
    """Reject parameters the chapter does not declare (papermill alone accepts them silently)."""
    declared = declared_parameters(nb_path)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ParameterError(f"{nb_path.stem} declares no parameter(s) {', '.join(unknown)}; "
                             f"it declares: {', '.join(declared)}")
    if "scale" in parameters:
        check_scale(parameters["scale"])


CELL_TIMEOUT = {"smoke": 1800, "full": 1800, "large": 4 * 3600}


def run_chapter(chapter: str | Path, scale: str = "full", parameters: dict | None = None, *,
                output: Path | None = None, write_back: bool = False,
                results_dir: Path | None = None, cell_timeout: int | None = None,
                progress: bool = False, require_registration: bool = True) -> dict:
    """Execute one chapter; returns ``{"notebook", "output", "seconds", "record"}``.

    A full or large run needs the chapter's registration (``<slug>.claims.yml`` beside the notebook)
    committed and unchanged; otherwise a :class:`kexue.results.RegistrationError` is raised before
    anything runs (``require_registration=False`` skips this early check, for the tests' toy notebooks).

    ``cell_timeout`` (seconds per cell) defaults to :data:`CELL_TIMEOUT` for the scale: 30 min for
    smoke and full (a full run is at most 25 min in all), 4 h for large, whose GPU-sized cells can
    run far longer on a CPU.

    The scale travels as ``$KEXUE_SCALE`` (the parameters cell reads it), and also as an injected
    ``scale`` parameter when the run is not the default full run, so both mechanisms are exercised.
    With ``write_back`` the executed notebook replaces the chapter's file, minus papermill's
    timestamps; the injected-parameters cell is kept only if it sets something besides the scale.

    A chapter of a checkout that does not hold the working directory (``kexue-run`` started outside
    the repository finds the chapter in the installed library's checkout) is run, but nothing is
    written into that checkout: ``write_back`` raises :class:`OutsideCheckoutError`, and the record
    goes beside ``output`` unless ``results_dir`` is given.
    """
    import nbformat
    import papermill as pm

    check_scale(scale)
    nb_path = Path(chapter) if str(chapter).endswith(".ipynb") else book.notebook_for(str(chapter))
    nb_path = nb_path.resolve()
    here, theirs = checkout_of(Path.cwd()), checkout_of(nb_path.parent)
    outside = theirs is not None and here != theirs
    if write_back and outside:
        where = (f"inside another checkout ({here})" if here is not None
                 else "not inside any checkout of the book")
        raise OutsideCheckoutError(
            f"refusing to write back into {nb_path}: that chapter belongs to the checkout {theirs}, and "
            f"the working directory {Path.cwd()} is {where}. Run from that checkout (`cd {theirs}`), "
            "or add --no-write-back (the executed notebook and its record then go to a temporary folder)")
    params = dict(parameters or {})
    check_parameters(nb_path, params)
    if scale != "full":
        params.setdefault("scale", scale)
    if write_back and scale != "full":
        raise ValueError(f"refusing to write {scale} outputs into the book: the committed notebook "
                         "holds a full run (drop --write-back, or use --scale full)")
    if scale in ("full", "large") and require_registration:
        # fail now rather than after a 15-minute run: the record would be refused at save()
        require_registered(nb_path.stem, scale, nb_path.with_name(f"{nb_path.stem}.claims.yml"))
    out = Path(output) if output else Path(tempfile.mkdtemp(prefix="kexue-run-")) / nb_path.name
    if outside and results_dir is None:
        results_dir = out.parent  # never the other checkout's results/
    env_backup = {k: os.environ.get(k) for k in ("KEXUE_SCALE", "KEXUE_RESULTS_DIR")}
    os.environ["KEXUE_SCALE"] = scale
    if results_dir is not None:
        os.environ["KEXUE_RESULTS_DIR"] = str(results_dir)
    t0 = time.perf_counter()
    socket_dir = tempfile.mkdtemp(prefix="kexue-kernel-")
    try:
        pm.execute_notebook(str(nb_path), str(out), parameters=params, kernel_name="python3",
                            cwd=str(nb_path.parent), progress_bar=progress, log_output=False,
                            execution_timeout=cell_timeout or CELL_TIMEOUT[scale],
                            config=kernel_config(socket_dir))
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        for k, v in env_backup.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    nb = book.strip_volatile(json.loads(out.read_text(encoding="utf-8")))
    extra = set(params) - {"scale"}
    if not extra:
        nb["cells"] = [c for c in nb["cells"]
                       if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    nbformat.validate(nbformat.from_dict(nb))
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    out.write_text(text, encoding="utf-8")
    if write_back:
        nb_path.write_text(text, encoding="utf-8")
    rec_path = book.record_path(nb_path.stem, scale, results_dir)
    record = json.loads(rec_path.read_text(encoding="utf-8")) if rec_path.is_file() else None
    return {"notebook": nb_path, "output": out, "seconds": seconds, "record": record,
            "record_path": rec_path}


def _parse_value(text: str):
    """Like papermill's ``-p``: int, then float, then bool/None, else the string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kexue-run", description=__doc__.split("\n\n")[0])
    ap.add_argument("chapter", help="chapter slug (e.g. bert-init-std) or path to its .ipynb")
    env_scale = os.environ.get("KEXUE_SCALE", "").strip()
    ap.add_argument("--scale", default=None,
                    help="smoke | full | large (default: $KEXUE_SCALE if set, else full)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"), help="a declared chapter parameter")
    ap.add_argument("--write-back", dest="write_back", action="store_true", default=None,
                    help="write outputs into the chapter (default for a full run with no -p)")
    ap.add_argument("--no-write-back", dest="write_back", action="store_false")
    ap.add_argument("--output", type=Path, help="where to write the executed notebook")
    args = ap.parse_args(argv)
    if args.scale is None:
        args.scale, source = env_scale or "full", f"$KEXUE_SCALE={env_scale!r} (--scale was not given)"
    else:
        source = f"--scale {args.scale}"
    if args.scale not in SCALES:
        print(f"kexue-run: unknown scale {args.scale!r} from {source}: use --scale "
              f"{' | '.join(SCALES)} (`make run CHAPTER=<slug> SCALE=full`; in Jupyter set $KEXUE_SCALE, "
              "with papermill pass `-p scale full`)", file=sys.stderr)
        return 2
    params = {k: _parse_value(v) for k, v in args.parameter}
    write_back = args.write_back
    if write_back is None:
        write_back = args.scale == "full" and not params
    try:
        nb_path = (Path(args.chapter) if args.chapter.endswith(".ipynb")
                   else book.notebook_for(args.chapter)).resolve()
        theirs, here = checkout_of(nb_path.parent), checkout_of(Path.cwd())
        if theirs is not None and theirs != here:
            print(f"kexue-run: the working directory {Path.cwd()} is "
                  + ("not inside a checkout of the book" if here is None else f"inside another checkout ({here})")
                  + f"; running {nb_path.relative_to(theirs)} from the checkout {theirs}"
                  + ("" if args.chapter.endswith(".ipynb") else " (the installed library's)"),
                  file=sys.stderr)
        elif theirs is not None:
            print(f"kexue-run: {nb_path.relative_to(theirs)} in the checkout {theirs}", file=sys.stderr)
        info = run_chapter(args.chapter, args.scale, params, output=args.output,
                           write_back=write_back, progress=True)
    except (ValueError, FileNotFoundError, RegistrationError) as e:  # OutsideCheckoutError too
        print(f"kexue-run: {e}", file=sys.stderr)
        return 2
    rec = info["record"]
    print(f"{info['notebook'].stem}: {args.scale} run took {info['seconds']:.0f} s; "
          f"executed notebook: {info['output']}"
          + (f"; written back to {info['notebook']}" if write_back else ""))
    if rec:
        print(f"record: {info['record_path']} — verdict {rec['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
