"""Shared benchmark helpers: median timing, agreement checks, JSON and PNG output."""
import json
import os
import platform
import statistics
import sys
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


def interleaved_median_seconds(variants, repeats, warmup=2):
    """Median wall time of each variants[label]() over `repeats` rounds, after `warmup` rounds.

    The variants take turns within each round, so a change in load from other processes (a
    shared machine) hits all of them alike instead of whichever happened to run then."""
    times = {label: [] for label in variants}
    for round_ in range(warmup + repeats):
        for label, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[label].append(time.perf_counter() - start)
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


def write_results(name, rows, columns):
    """Writes benchmarks/results/<name>.json and, when matplotlib is installed, <name>.png."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), "rows": rows}, f, indent=2)
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


def print_table(rows, columns, ratio_of, ratio_to):
    header = f"{'case':<14}" + "".join(f"{c:>16}" for c in columns) + f"{'ratio':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = "".join(f"{r[c] * 1e3:>13.2f} ms" for c in columns)
        print(f"{r['case']:<14}{cells}{r[ratio_of] / r[ratio_to]:>10.3f}")
    print(f"ratio = {ratio_of} / {ratio_to} (below 1.0: {ratio_of} is faster)")
