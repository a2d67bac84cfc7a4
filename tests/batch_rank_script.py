"""Worker for the two-rank batch test (launched by torch.distributed.run, gloo on CPU).

Usage: batch_rank_script.py INPUT_DIR OUTPUT_DIR MARK_DIR

Each output records the rank that wrote it; every call of ``process`` is logged per rank in
MARK_DIR; after ``run_batch`` returns (summary written, ranks synchronised) each rank writes
``done.rank<r>.json`` with the counts it saw, *before* tearing the process group down.
"""

import json
import sys
from pathlib import Path

from vitsuite.core.batch import list_inputs, run_batch
from vitsuite.core.distributed import cleanup_distributed, init_distributed
from vitsuite.core.fileio import atomic_write_text


def main() -> None:
    src_dir, out_dir, mark_dir = (Path(a) for a in sys.argv[1:4])
    info = init_distributed("cpu")

    def process(src: Path, dst: Path) -> dict:
        with open(mark_dir / f"calls.rank{info.rank}", "a") as fh:
            fh.write(src.name + "\n")
        value = float(src.read_text())
        atomic_write_text(dst, f"{info.rank} {value * 2}\n")
        return {"rank": info.rank}

    result = run_batch(list_inputs(src_dir, extensions=".txt"), out_dir, process, progress=False)
    atomic_write_text(mark_dir / f"done.rank{info.rank}.json", json.dumps(result.counts))
    cleanup_distributed()


if __name__ == "__main__":
    main()
