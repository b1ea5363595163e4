"""Shared benchmark helpers: median timing, agreement checks, JSON and PNG output."""
import json
import os
import hashlib
import platform
import random
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def median_seconds(fn, repeats, warmup=2):
    """Median wall time of fn() over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_timings(variants, repeats, warmup=2, args=(), seed=0, reorder=True):
    """Wall times of each variants[label](*args), one per round, over `repeats` rounds.

    NOTE: [Timing that order cannot bias]
    - The variants take turns within each round, so a change in load from other processes hits
      all of them alike instead of whichever happened to run then.
    - Each round runs them in a new order (a seeded shuffle), so no variant always runs right
      after the same other one.
    - Each timed call comes right after an untimed call of the same variant. What a call costs
      depends on what ran before it: a variant that frees large buffers, or many small ones,
      leaves glibc's allocator to map and fault in fresh pages for the next one (measured: 3 ms
      on the 2.5 ms embedding case, charged to whichever variant ran after the loop). A training
      loop calls the same function again and again, so each variant is timed after itself.
    `warmup` untimed rounds come first. Returns {label: [seconds of each round]}, rounds in
    order, so that two variants' times of one round can be paired (ratio_stats).
    `reorder=False` keeps the order of `variants` and times each call after whichever variant
    ran before it (benchmarks/order_check.py shows what that does to a ratio)."""
    order = list(variants)
    rng = random.Random(seed)
    times = {label: [] for label in variants}
    for round_ in range(warmup + repeats):
        if reorder:
            rng.shuffle(order)
        for label in order:
            fn = variants[label]
            if reorder:
                fn(*args)
            start = time.perf_counter()
            fn(*args)
            if round_ >= warmup:
                times[label].append(time.perf_counter() - start)
    return times


def quartiles(samples):
    """(first quartile, median, third quartile) of samples."""
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, q2, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q2, q3


def ratio_stats(numerator, denominator):
    """Quartiles of the per-round ratios of two variants' times (paired by round)."""
    return quartiles([a / b for a, b in zip(numerator, denominator)])


def ratio_text(stats):
    """A ratio with its interquartile range; "≈1.0" when that range holds 1.0 (no difference
    the run can tell from noise)."""
    low, median, high = stats
    value = "≈1.0" if low <= 1.0 <= high else f"{median:.2f}"
    return f"{value} ({low:.2f}-{high:.2f})"


def timed_row(case, variants, repeats, warmup=2, args=(),
              ratios=(("functorch_lite", "torch.func"),), seed=0, reorder=True):
    """One benchmark row: each variant's median seconds, its interquartile range under
    "spread", and the paired ratios named in `ratios` as [q1, median, q3] under "ratios"."""
    times = interleaved_timings(variants, repeats, warmup, args, seed, reorder)
    row = {"case": case}
    row.update({label: statistics.median(t) for label, t in times.items()})
    row["spread"] = {label: [quartiles(t)[0], quartiles(t)[2]] for label, t in times.items()}
    row["ratios"] = {f"{a} / {b}": list(ratio_stats(times[a], times[b]))
                     for a, b in ratios if a in times and b in times}
    return row


def interleaved_median_seconds(variants, repeats, warmup=2):
    """Median wall time of each variants[label]() (see interleaved_timings)."""
    times = interleaved_timings(variants, repeats, warmup)
    return {label: statistics.median(t) for label, t in times.items()}


def assert_trees_close(a, b, atol=1e-4, rtol=1e-4):
    la = torch.utils._pytree.tree_leaves(a)
    lb = torch.utils._pytree.tree_leaves(b)
    assert len(la) == len(lb), (len(la), len(lb))
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def machine():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # 1, 5 and 15 minute load averages when the results were written: on a shared machine,
        # a load above the number of CPUs means the times include waiting for a CPU.
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def progress(message):
    print(message, file=sys.stderr, flush=True)


def provenance(script):
    """What wrote a result: the commit, whether the work tree had local changes, and a hash of
    the script (test/test_docs.py checks it against the script as it is now, so a figure cannot
    outlive the code that measured it)."""
    root = os.path.dirname(HERE)

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain")
    with open(script, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {
        "commit": git("rev-parse", "HEAD"),
        "local_changes": None if status is None else bool(status),
        "script": os.path.relpath(os.path.abspath(script), root),
        "script_sha256": digest,
    }


def write_results(name, rows, columns, output=None, script=None):
    """Writes benchmarks/results/<name>.json and, when matplotlib is installed, <name>.png.

    The JSON holds the machine, the provenance of `script` (default: the script being run),
    the rows and, when given, the table the script printed (`output`)."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    data = {"machine": machine(), "provenance": provenance(script or sys.argv[0]), "rows": rows}
    if output is not None:
        data["output"] = output
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return path, None
    labels = [r["case"] for r in rows]
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 4))
    for i, col in enumerate(columns):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r[col] * 1e3 for r in rows], width, label=col)
    ax.set_xticks([j + width * (len(columns) - 1) / 2 for j in range(len(rows))])
    ax.set_xticklabels(labels)
    ax.set_ylabel("median time (ms)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(name.replace("_", " "))
    fig.tight_layout()
    png = os.path.join(RESULTS, f"{name}.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return path, png


def format_table(rows, columns, ratio_of, ratio_to):
    """The medians (with interquartile ranges) of timed_row rows, and the paired ratio."""
    ratio = f"{ratio_of} / {ratio_to}"
    widths = [max(len(c) + 3, 26) for c in columns]
    header = f"{'case':<12}" + "".join(f"{c + ' ms':>{w}}" for c, w in zip(columns, widths))
    header += f"  {ratio}"
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = ""
        for c, w in zip(columns, widths):
            low, high = r["spread"][c]
            cells += f"{r[c] * 1e3:.2f} ({low * 1e3:.2f}-{high * 1e3:.2f})".rjust(w)
        lines.append(f"{r['case']:<12}{cells}  {ratio_text(r['ratios'][ratio])}")
    one, five, fifteen = os.getloadavg()
    lines += [
        "median (interquartile range) of each variant; the ratio is that of the two variants'",
        "times in each round: median (interquartile range), ≈1.0 when the range holds 1.0.",
        f"Below 1.0: {ratio_of} is faster. Load average {one:.2f} / {five:.2f} / {fifteen:.2f}"
        " (1 / 5 / 15 min).",
    ]
    return "\n".join(lines)


def print_table(rows, columns, ratio_of, ratio_to):
    """Prints format_table's table and returns it."""
    table = format_table(rows, columns, ratio_of, ratio_to)
    print(table)
    return table
