"""Folder runner behind every pipeline's ``predict``: list inputs, map them to outputs, run a
per-file function (sharded over torchrun ranks), collect per-file errors, write a JSON summary.

Contract of the per-file function::

    def process(src: Path, dst: Path) -> dict | None:
        save_atomic(dst, image.save)          # or any writer wrapped in fileio.atomic_path
        return {"shape": [h, w]}              # optional, JSON-able; stored in the summary

Outputs are written atomically (temp file + rename), so a failing file or Ctrl-C never leaves a
partial output behind. A bad file does not stop the job: its error is recorded as one line
naming the file. The output folder is never the input folder nor inside it, and inputs are
never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .distributed import all_gather_objects, barrier, cleanup_distributed, dist_info, init_distributed
from .errors import UserError
from .fileio import atomic_path, atomic_write_text, is_inside

ProcessFn = Callable[[Path, Path], "dict[str, Any] | None"]

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_MAX_ERROR_CHARS = 500
_MAX_REPORTED_FAILURES = 20


# --------------------------------------------------------------------------- listing inputs


class InputList(list):
    """A ``list[Path]`` that also remembers the folder it was listed from (``root``).

    :func:`run_batch` uses ``root`` as the default ``input_root``, so outputs mirror the
    sub-folders below the folder the user named.
    """

    def __init__(self, paths: Iterable[Path], root: Path):
        super().__init__(paths)
        self.root = root


def _norm_exts(extensions: str | Iterable[str] | None) -> tuple[str, ...]:
    if extensions is None:
        return ()
    if isinstance(extensions, str):
        extensions = [extensions]
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def _has_ext(path: Path, exts: tuple[str, ...]) -> bool:
    return not exts or path.name.lower().endswith(exts)


def _is_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _common_dir(paths: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.absolute().parent) for p in paths]))


def _read_list_file(list_file: Path) -> list[Path]:
    if not list_file.is_file():
        raise UserError(f"{list_file}: list file not found")
    paths = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        if not path.is_file():
            raise UserError(f"{list_file}:{lineno}: {entry}: no such file")
        paths.append(path)
    return paths


def list_inputs(
    spec: str | os.PathLike, extensions: str | Iterable[str] | None = None, recursive: bool = False
) -> InputList:
    """List input files from a folder, a glob pattern, a single file or ``@list.txt``.

    ``extensions`` (e.g. ``[".png", "jpg", ".nii.gz"]``) filters case-insensitively; files named
    explicitly (a single file or a list entry) with another extension are an error. A folder is
    searched below when ``recursive``; hidden files and folders are skipped. In a list file, one
    path per line, blank lines and ``#`` comments are ignored and relative paths are relative to
    the list file. Returns absolute paths, sorted and de-duplicated; raises :class:`UserError`
    when the spec does not exist or nothing matches.
    """
    text = os.fspath(spec)
    exts = _norm_exts(extensions)
    explicit = False
    if text.startswith("@"):
        list_file = Path(text[1:]).expanduser()
        paths, explicit = _read_list_file(list_file), True
        root = _common_dir(paths) if paths else list_file.parent
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            paths = [p for p in found if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)]
            root = path
        elif path.is_file():
            paths, root, explicit = [path], path.parent, True
        elif _is_magic(text):
            paths = [Path(p) for p in glob(os.path.expanduser(text), recursive=True) if os.path.isfile(p)]
            base = []
            for part in path.parts:
                if _is_magic(part):
                    break
                base.append(part)
            root = Path(*base) if base else Path(".")
        else:
            raise UserError(f"{text}: no such file or folder")
    if exts:
        wrong = [p for p in paths if not _has_ext(p, exts)]
        if explicit and wrong:
            raise UserError(f"{wrong[0]}: unsupported file type; expected {', '.join(exts)}")
        paths = [p for p in paths if _has_ext(p, exts)]
    if not paths:
        what = f" with extension {', '.join(exts)}" if exts else ""
        hint = " (sub-folders are not searched unless recursive)" if Path(text).is_dir() and not recursive else ""
        raise UserError(f"{text}: no input files found{what}{hint}")
    unique = {p.absolute() for p in paths}
    return InputList(sorted(unique, key=lambda p: p.as_posix()), root.absolute())


# --------------------------------------------------------------------------- output naming


def split_ext(name: str) -> tuple[str, str]:
    """Split a file name into stem and extension, keeping compressed double extensions
    together: ``"scan.nii.gz" -> ("scan", ".nii.gz")``, ``"a.png" -> ("a", ".png")``."""
    path = Path(name)
    if path.suffix.lower() in _COMPRESSED and len(path.suffixes) >= 2:
        ext = "".join(path.suffixes[-2:])
        return name[: -len(ext)], ext
    return path.stem, path.suffix


def output_path_for(
    input: str | os.PathLike,
    input_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    suffix: str | None = None,
    ext: str | None = None,
) -> Path:
    """Destination of ``input``: its path relative to ``input_root`` below ``output_dir``, with
    ``suffix`` appended to the stem and the extension replaced by ``ext`` (``"png"`` or
    ``".png"``; ``""`` drops it): ``in/a/x.nii.gz -> out/a/x_mask.png``."""
    src, root = Path(input).absolute(), Path(input_root).absolute()
    try:
        rel = src.relative_to(root)
    except ValueError:
        try:
            rel = src.resolve().relative_to(root.resolve())
        except ValueError:
            raise UserError(f"{src}: not inside the input folder {root}") from None
    stem, old_ext = split_ext(rel.name)
    if ext is None:
        new_ext = old_ext
    else:
        new_ext = ext if not ext or ext.startswith(".") else f".{ext}"
    return Path(output_dir).absolute() / rel.parent / f"{stem}{suffix or ''}{new_ext}"


def save_atomic(dst: str | os.PathLike, writer: Callable[..., Any], *args: Any, **kwargs: Any) -> Path:
    """Call ``writer(tmp_path, *args, **kwargs)`` on a temp file next to ``dst``, then rename it
    onto ``dst``: the one-line way to write an output, e.g. ``save_atomic(dst, img.save)`` or
    ``save_atomic(dst, np.save, array)``. On error the temp file is removed."""
    with atomic_path(dst) as tmp:
        writer(tmp, *args, **kwargs)
    return Path(dst)


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """The items rank ``rank`` handles: ``items[rank::world_size]`` (deterministic, disjoint)."""
    return list(items[rank::world_size])


# --------------------------------------------------------------------------- results


@dataclass
class FileResult:
    """Outcome for one input: ``status`` is processed, skipped, failed or pending (not reached)."""

    input: Path
    output: Path
    status: str
    error: str | None = None
    seconds: float = 0.0
    rank: int | None = None
    info: Any = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form used in the summary."""
        return {
            "input": str(self.input),
            "output": str(self.output),
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "rank": self.rank,
            "info": self.info,
        }


@dataclass
class BatchResult:
    """Outcome of :func:`run_batch`: one :class:`FileResult` per input (in input order)."""

    files: list[FileResult]
    output_dir: Path
    input_root: Path
    summary_path: Path | None
    total_seconds: float
    world_size: int = 1
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        """Number of files per status, plus ``total``."""
        counts = {"total": len(self.files), "processed": 0, "skipped": 0, "failed": 0, "pending": 0}
        for f in self.files:
            counts[f.status] += 1
        return counts

    @property
    def failed(self) -> list[FileResult]:
        """The files that failed."""
        return [f for f in self.files if f.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when every file was processed or skipped."""
        return not self.interrupted and all(f.status in ("processed", "skipped") for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form written as the summary."""
        return {
            "output_dir": str(self.output_dir),
            "input_root": str(self.input_root),
            "world_size": self.world_size,
            "interrupted": self.interrupted,
            "total_seconds": round(self.total_seconds, 4),
            "counts": self.counts,
            "files": [f.to_dict() for f in self.files],
        }

    def report(self) -> str:
        """Concise human-readable end report (failed files listed with their reasons)."""
        c = self.counts
        head = "Batch interrupted" if self.interrupted else "Batch done"
        parts = [f"{c['processed']} processed", f"{c['skipped']} skipped", f"{c['failed']} failed"]
        if c["pending"]:
            parts.append(f"{c['pending']} not reached")
        ranks = f", {self.world_size} ranks" if self.world_size > 1 else ""
        lines = [f"{head}: {', '.join(parts)} of {c['total']} files in {self.total_seconds:.1f} s{ranks}."]
        lines.append(f"Outputs: {self.output_dir}" + (f"  Summary: {self.summary_path}" if self.summary_path else ""))
        failed = self.failed
        if failed:
            lines.append(f"Failed ({len(failed)}):")
            lines += [f"  {f.error}" for f in failed[:_MAX_REPORTED_FAILURES]]
            if len(failed) > _MAX_REPORTED_FAILURES:
                lines.append(f"  ... and {len(failed) - _MAX_REPORTED_FAILURES} more (see the summary)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- runner


def _error_line(src: Path, exc: BaseException) -> str:
    """One line naming the file: UserError messages as is, others as ``TypeName: message``."""
    msg = str(exc)
    if not isinstance(exc, UserError):
        msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    if str(src) not in msg:
        msg = f"{src}: {msg}"
    msg = " ".join(msg.split())
    return msg if len(msg) <= _MAX_ERROR_CHARS else msg[: _MAX_ERROR_CHARS - 3] + "..."


def _remove_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_file() or path.is_symlink():
            path.unlink()


def _run_one(src: Path, dst: Path, process: ProcessFn, skip_existing: bool, debug: bool, rank: int) -> FileResult:
    start = time.perf_counter()
    if skip_existing and dst.exists():
        return FileResult(src, dst, "skipped", rank=rank)
    existed = dst.exists()
    try:
        info = process(src, dst)
        if not dst.exists():
            raise RuntimeError(f"process() returned without writing {dst}")
    except BaseException as exc:
        if not existed:  # a process that did not write atomically must not leave a partial output
            _remove_file(dst)
        if debug or not isinstance(exc, Exception):
            raise
        return FileResult(src, dst, "failed", _error_line(src, exc), time.perf_counter() - start, rank)
    return FileResult(src, dst, "processed", None, time.perf_counter() - start, rank, info)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM (what torchrun sends workers on Ctrl-C) into KeyboardInterrupt meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def _check_plan(
    srcs: list[Path], dsts: list[Path], root: Path, out: Path, summary: Path, overwrite: bool, skip_existing: bool
) -> None:
    """Refuse a bad plan before any work (same outcome on every rank)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output path exists and is not a folder")
    if is_inside(out, root):
        raise UserError(
            f"output folder {out} is the input folder {root} or inside it; choose a folder outside it "
            "(the batch runner never writes into the input folder)"
        )
    inputs = {s.resolve() for s in srcs}
    seen: dict[Path, Path] = {}
    for src, dst in zip(srcs, dsts):
        if dst.resolve() in inputs:
            raise UserError(f"{dst}: output would overwrite an input file")
        if dst == summary:
            raise UserError(f"{src}: output {dst} collides with the summary file; pass another summary_name")
        if dst in seen:
            raise UserError(f"{seen[dst]} and {src} both map to {dst}; rename one or pass a suffix")
        seen[dst] = src
    if not overwrite and not skip_existing:
        existing = [d for d in dsts if d.exists()]
        if existing:
            raise UserError(
                f"{existing[0]}: output exists ({len(existing)} of {len(dsts)} do); "
                "pass overwrite=True to replace or skip_existing=True to resume"
            )


def run_batch(
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    process: ProcessFn,
    *,
    input_root: str | os.PathLike | None = None,
    suffix: str | None = None,
    ext: str | None = None,
    skip_existing: bool = False,
    overwrite: bool = True,
    progress: bool = True,
    debug: bool = False,
    summary_name: str = "summary.json",
) -> BatchResult:
    """Run ``process(src, dst)`` for every input, sharded over torchrun ranks, and summarise.

    ``dst`` comes from :func:`output_path_for` (relative sub-paths kept below ``output_dir``;
    ``input_root`` defaults to ``inputs.root`` from :func:`list_inputs`, else the inputs' common
    folder). ``process`` must write ``dst`` atomically (:func:`save_atomic` or
    ``fileio.atomic_path``) and may return a JSON-able dict stored in the summary.

    Refuses (:class:`UserError`, before any work) an output folder equal to or inside the input
    folder, outputs that would overwrite inputs or collide, and existing outputs when neither
    ``overwrite`` nor ``skip_existing`` is set. ``skip_existing`` skips files whose output exists
    (resume). Per-file exceptions are recorded as one-line errors and the job goes on; with
    ``debug`` they are re-raised. Under torchrun rank r processes inputs ``r::world_size`` (the
    process group is created if missing, and then torn down at the end); results are gathered so
    every rank returns the full :class:`BatchResult`, and rank 0 writes ``summary_name`` in
    ``output_dir`` atomically, prints the end report and shows the progress bar (only on a TTY).
    Ctrl-C (or SIGTERM) stops after cleaning up the file in progress, writes a best-effort summary
    (without the other ranks' results when distributed) and re-raises ``KeyboardInterrupt``.
    """
    start = time.perf_counter()
    srcs = [Path(p).absolute() for p in inputs]
    if not srcs:
        raise UserError("no input files to process")
    root = Path(input_root or getattr(inputs, "root", None) or _common_dir(srcs)).absolute()
    out = Path(output_dir).absolute()
    summary_path = out / summary_name
    dsts = [output_path_for(s, root, out, suffix, ext) for s in srcs]
    _check_plan(srcs, dsts, root, out, summary_path, overwrite, skip_existing)

    import torch.distributed as dist

    env_world = int(os.environ.get("WORLD_SIZE", 1))
    owns_group = env_world > 1 and dist.is_available() and not dist.is_initialized()
    info = init_distributed() if owns_group else dist_info()
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    mine = shard(range(len(srcs)), info.rank, info.world_size)
    show = progress and info.is_main and sys.stderr.isatty()
    bar = tqdm(total=len(mine), disable=not show, unit="file", desc="batch", dynamic_ncols=True)
    done: dict[int, FileResult] = {}
    interrupted = False
    with _sigterm_as_interrupt():
        try:
            for i in mine:
                done[i] = _run_one(srcs[i], dsts[i], process, skip_existing, debug, info.rank)
                if done[i].status == "failed":
                    bar.set_postfix(failed=sum(r.status == "failed" for r in done.values()))
                bar.update(1)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()

    if info.distributed and not interrupted:  # collectives could hang once a rank is interrupted
        for part in all_gather_objects(done):
            done.update(part)
    files = [done.get(i) or FileResult(srcs[i], dsts[i], "pending") for i in range(len(srcs))]
    result = BatchResult(files, out, root, summary_path, time.perf_counter() - start, info.world_size, interrupted)
    if info.is_main:
        try:
            atomic_write_text(summary_path, json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        except (OSError, TypeError, ValueError) as exc:
            if not interrupted:
                raise
            result.summary_path = None
            print(f"could not write {summary_path}: {exc}", file=sys.stderr)
        print(result.report(), flush=True)
    if interrupted:
        raise KeyboardInterrupt
    if info.distributed:
        barrier()  # no rank returns before the summary exists
    if owns_group:
        cleanup_distributed()
    return result
