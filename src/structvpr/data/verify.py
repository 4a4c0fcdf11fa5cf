"""Every image and label map a run will read, decoded once up front, with a cache of files already verified.

A header check passes a truncated JPEG or PNG; only a full decode finds it. :func:`verify_files`
decodes every file in worker threads (Pillow releases the GIL while decoding), shows a progress
bar on long lists, and remembers each file that decoded (by path, size and modification time) in
a cache file, so a second run over the same data stats the files and decodes nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from structvpr.data.labels import ClassGrouping, load_label_map
from structvpr.errors import StructVPRInputError
from structvpr.utils.io import write_text_atomic

#: Where the caches of verified files go (``STRUCTVPR_CACHE``, else ``~/.cache/structvpr``).
CACHE_ENV = "STRUCTVPR_CACHE"
#: Lists at least this long get a progress bar.
PROGRESS_MIN = 2000


def cache_dir() -> Path:
    """The folder of the verified-file caches."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "structvpr") / "verified"


def _signature(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size} {st.st_mtime_ns}"


def _problem(path: str, load: Callable[[str], object]) -> str | None:
    """Why ``path`` cannot be used (``missing``, or the reader's message without the path), else None."""
    if not os.path.isfile(path):
        return "missing"
    try:
        load(path)
    except StructVPRInputError as err:
        return str(err).split(": ", 1)[-1]
    return None


def _check_image(path: str) -> str | None:
    from structvpr.data.datasets import load_rgb

    return _problem(path, load_rgb)  # a full decode: finds truncated files


def verify_files(
    paths: Sequence[str | Path],
    kind: Literal["image", "label"] = "image",
    grouping: ClassGrouping | None = None,
    workers: int | None = None,
    cache: bool = True,
    progress: bool | None = None,
    what: str = "files",
) -> list[tuple[str, str]]:
    """``(path, problem)`` for every file of ``paths`` that is missing or does not fully decode.

    Args:
        paths: Files to check.
        kind: ``image`` (RGB photos) or ``label`` (single-channel label maps, ids checked against
            ``grouping`` when given).
        grouping: The taxonomy label-map ids must belong to.
        workers: Decoding threads (default: the CPUs this process may use, at most 16).
        cache: Skip files verified before with the same size and modification time, and
            remember the ones verified now (see :func:`cache_dir`).
        progress: Show a progress bar (default: for ``PROGRESS_MIN`` files or more on a terminal).
        what: Names the list on the progress bar.

    Returns:
        The bad files in the order given (empty when all decode).

    """
    names = [str(p) for p in paths]
    if kind == "image":
        check = _check_image
    else:  # a full decode, and ids checked against the taxonomy
        check = lambda path: _problem(path, lambda p: load_label_map(p, grouping))  # noqa: E731
    taxonomy = "" if grouping is None else f"{len(grouping.classes)}:{grouping.ignore_id}"
    store = cache_dir() / f"{kind}-{hashlib.sha1(taxonomy.encode()).hexdigest()[:10]}.txt"
    known: dict[str, str] = {}
    if cache and store.is_file():
        for line in store.read_text().splitlines():
            sig_size, sig_time, path = line.split(" ", 2)
            known[path] = f"{sig_size} {sig_time}"
    signatures = [_signature(p) for p in names]
    todo = [i for i, (p, sig) in enumerate(zip(names, signatures)) if sig is None or known.get(p) != sig]
    if workers is None:
        workers = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    show = progress if progress is not None else len(todo) >= PROGRESS_MIN and sys.stderr.isatty()
    problems: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda i: check(names[i]), todo, chunksize=64)
        if show:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc=f"checking {what}", unit="file")
        for i, problem in zip(todo, results):
            if problem is not None:
                problems[i] = problem
    if cache and todo:
        for i in todo:
            if i not in problems and signatures[i] is not None:
                known[names[i]] = signatures[i]  # type: ignore[assignment]
        store.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(store, "".join(f"{sig} {path}\n" for path, sig in known.items()))
    return [(names[i], problems[i]) for i in sorted(problems)]
