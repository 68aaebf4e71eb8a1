"""What `bridgegan bench` writes: its columns (FIELDS) and their ratios to the reference
rows, bench.partial.csv as the rows are measured, bench.csv / .json / .png when the run is
done, and the terminal table. Apart from the timing (``bench``): reading, comparing and
plotting rows needs no torch (``benchmarks/gpu_check.py`` gathers a lent machine's with it)."""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import json
import os
import sys
from pathlib import Path

from ..files import write_files_atomic

PARTIAL_CSV = "bench.partial.csv"  # the rows of a run in progress (or killed), as measured
RESULT_FILES = ("bench.csv", "bench.json", "bench.png")  # the table, its data, the plot
BENCH_FILES = (*RESULT_FILES, PARTIAL_CSV)  # what a run writes
FIELDS = ["what", "backend", "dtype", "batch", "resolution", "metric", "unit", "p50", "p20",
          "p80", "samples", "spread", "images_per_s", "peak_mem_mb", "vs_reference_fp32",
          "vs_reference_same_dtype", "roofline_share", "gflop_per_image", "first_call_s",
          "build_s", "variant", "parity", "note", "device", "torch", "triton", "commit", "date"]


@contextlib.contextmanager
def streamed(out: str | Path | None):
    """A function that appends a row to ``out``/PARTIAL_CSV (the header first) and flushes
    it, so that an interrupted run keeps every row measured (beside the last complete
    table, which stays until ``write_results`` replaces it); a no-op without ``out``. The
    file (and ``out``) is made at the first row: a run refused before it leaves nothing.
    An interrupted run's rows found there are moved aside first (``partial_aside``), not
    truncated (a header alone, of a run stopped before its first row, is not kept)."""
    if out is None:
        yield lambda row: None
        return
    partial = Path(out) / PARTIAL_CSV
    with contextlib.ExitStack() as files:
        f = writer = None

        def add(row: dict) -> None:
            nonlocal f, writer
            if writer is None:
                Path(out).mkdir(parents=True, exist_ok=True)
                if partial.is_file() and _has_rows(partial):
                    aside = partial_aside(partial)
                    os.replace(partial, aside)
                    print(f"bench: kept an interrupted run's rows in {aside}", file=sys.stderr)
                f = files.enter_context(open(partial, "w", newline=""))
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                writer.writeheader()
            writer.writerow(row)
            f.flush()

        yield add


def _has_rows(table: Path) -> bool:
    """Whether CSV file ``table`` holds a line past its header."""
    with open(table, newline="") as f:
        return len(list(itertools.islice(f, 2))) > 1


def partial_aside(partial: Path) -> Path:
    """Where an interrupted run's PARTIAL_CSV goes when another run starts: named after
    its last write (``bench.partial-YYYYMMDD-HHMMSS.csv``; a second one of that second
    gets a counter)."""
    stamp = dt.datetime.fromtimestamp(partial.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
    aside, k = partial.with_name(f"{partial.stem}-{stamp}.csv"), 1
    while aside.exists():
        k += 1
        aside = partial.with_name(f"{partial.stem}-{stamp}-{k}.csv")
    return aside


def measured(rows: list[dict]) -> list[dict]:
    """The rows that hold a measurement (not ``skipped``)."""
    return [r for r in rows if r["metric"] == "latency"]


def is_baseline(variant: str) -> bool:
    """Whether a variant (by name) is the plain reference of its dtype, the ratio columns'
    baseline: no layout, graph or stream tag (``heuristics`` keys its own comparisons)."""
    backend, _, *tags = variant.split("-")
    return backend == "reference" and set(tags) <= {"heuristics"}


def add_ratios(rows: list[dict]) -> None:
    """vs_reference_fp32 / vs_reference_same_dtype: the baseline's p50 over the row's, the
    baseline being the plain reference variant (``is_baseline``) in float32 / the row's
    dtype, at the same workload, size and cuDNN algorithm choice."""
    def key(r):
        return (r["what"], r["batch"], r["resolution"], "heuristics" in r["variant"].split("-"))

    ref = {(key(r), r["dtype"]): r["p50"] for r in measured(rows) if is_baseline(r["variant"])}
    for r in measured(rows):
        base, same = ref.get((key(r), "float32")), ref.get((key(r), r["dtype"]))
        r["vs_reference_fp32"] = round(base / r["p50"], 3) if base else ""
        r["vs_reference_same_dtype"] = round(same / r["p50"], 3) if same else ""


def csv_text(rows: list[dict]) -> str:
    """``rows`` as bench.csv holds them (FIELDS, in order)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results(rows: list[dict], peaks: dict, out: str | Path, title: str = "") -> list[Path]:
    """CSV + JSON + PNG plot of images/s against batch, one line per variant and workload,
    written together (``files.write_files_atomic``: a failed write leaves the last run's
    three as they were). A table of skipped rows only has nothing to plot: the last run's
    plot is removed. Returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table, data, figure = (out / name for name in RESULT_FILES)
    chart = (plot_png(rows, title or f"bridgegan bench on {peaks.get('device', '?')}")
             if measured(rows) else None)
    write_files_atomic({table: csv_text(rows).encode(),
                        data: json.dumps({"peaks": peaks, "rows": rows}, indent=1).encode(),
                        figure: chart})
    (out / PARTIAL_CSV).unlink(missing_ok=True)  # the complete table replaces it
    return [table, data] + ([figure] if chart is not None else [])


def plot_png(rows: list[dict], title: str) -> bytes:
    """The PNG of images/s against batch, one line per variant and workload, one panel per
    workload and resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in measured(rows):
        groups.setdefault((r["what"], r["resolution"], r["variant"]), []).append(r)
    for (what, res, variant), rs in groups.items():
        batches = [r["batch"] for r in rs]
        if len(set(batches)) < len(batches):  # rows of several runs: one line would mix them
            raise ValueError(f"{variant} {what} @ {res} px has several rows at one batch "
                             f"({sorted(batches)}): rows of several runs; name each run's "
                             "variants apart before plotting them together")
    whats = sorted({(g[0], g[1]) for g in groups})
    fig, axes = plt.subplots(1, len(whats), figsize=(5.5 * len(whats), 4.2), squeeze=False)
    for ax, (what, res) in zip(axes[0], whats):
        for (w, r_, variant), rs in sorted(groups.items()):
            if (w, r_) != (what, res):
                continue
            rs = sorted(rs, key=lambda r: r["batch"])
            ax.plot([r["batch"] for r in rs], [r["images_per_s"] for r in rs], marker="o",
                    label=variant)
        ax.set(xscale="log", yscale="log", xlabel="batch (images per call)",
               ylabel="images / s", title=f"{what} @ {res}x{res}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def format_table(rows: list[dict]) -> str:
    head = (f"{'what':14s} {'variant':24s} {'res':>4s} {'batch':>5s} {'p50 ms':>9s} "
            f"{'img/s':>9s} {'x ref32':>8s} {'x ref':>7s} {'roof':>6s} {'mem MB':>8s} "
            f"{'1st s':>7s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lead = f"{r['what']:14s} {r['variant']:24s} {r['resolution']:>4d} {r['batch']!s:>5s} "
        if r["metric"] == "skipped":
            lines.append(f"{lead} skipped: {r['note']}")
            continue
        lines.append(
            f"{lead}{r['p50']:>9.3f} {r['images_per_s']:>9.1f} {str(r['vs_reference_fp32']):>8s} "
            f"{str(r['vs_reference_same_dtype']):>7s} {r['roofline_share']:>6.3f} "
            f"{str(r['peak_mem_mb']):>8s} {r['first_call_s']:>7.2f}")
    return "\n".join(lines)
