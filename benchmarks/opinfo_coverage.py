"""OpInfo coverage of vmap: functorch_lite.vmap next to torch.func.vmap on the same inputs.

For every OpInfo in torch's op_db (float32, CPU) and its samples, both vmaps run every batched
case of test/vmap_opinfo_utils.py (see NOTE: [Batched OpInfo cases]) against the for-loop
reference. An OpInfo is "correct" when every case matches, and "without fallback" when it is
correct with the for-loop fallback disabled (its ops have batching rules or decompose into ops
that do). OpInfos whose samples all skip (the loop reference errors, random ops, no float32) are
left out of both shares. Data-dependent operators and dtype conversions are reported as their own
rows, outside the headline shares (see NOTE: [OpInfo groups]). A second table does the same for
vmap over vjp (the backward operators that vmap(grad) and jacrev run; see NOTE: [Batched vjp
cases]).

    python benchmarks/opinfo_coverage.py [--max-samples N] [--ops name,name] [--no-write]

Writes docs/opinfo_coverage.md, benchmarks/results/opinfo_coverage.json and the summary that
docs/benchmarks.md quotes, docs/data/opinfo_coverage.json (with the commit and script hash).
"""
import argparse
import collections
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "test"))

import functorch_lite  # noqa: E402
from functorch_lite import _C  # noqa: E402
import vmap_opinfo_utils as U  # noqa: E402
from common import provenance  # noqa: E402


def _ours_fallback(enabled):
    _C._set_vmap_fallback_enabled(enabled)


def _theirs_fallback(enabled):
    torch._C._functorch._set_vmap_fallback_enabled(enabled)


IMPLS = {
    "functorch_lite": (functorch_lite.vmap, _ours_fallback),
    "torch.func": (torch.func.vmap, _theirs_fallback),
}
VJPS = {"functorch_lite": functorch_lite.vjp, "torch.func": torch.func.vjp}

# NOTE: [OpInfo groups]
# Two kinds of OpInfo would say little about batching rules if they were counted with the rest:
# - data-dependent: the output shape (or, for index_put with a boolean mask, the set of written
#   elements) depends on the values of the inputs. torch.func refuses such operators by design;
#   ours runs them through the for-loop fallback, which works only when every sample gives the
#   same shape (the per-sample data of NOTE: [Batched OpInfo cases] keeps mask counts, so they
#   do). Counting them would make a design choice look like coverage;
# - conversion: Tensor.to and the dtype methods (float(), bool(), ...) are one operator, _to_copy,
#   so one difference in it (such as the memory format of a batched result) would count once per
#   OpInfo.
# Each group gets its own row; the headline shares are over the other OpInfos ("general").
DATA_DEPENDENT = frozenset({
    "nonzero", "nonzero_static", "argwhere", "masked_select", "unique", "unique_consecutive",
    "histogram", "histogramdd", "histc", "bincount", "index_put", "repeat_interleave", "narrow",
})
CONVERSION = frozenset({
    "to", "bool", "byte", "char", "short", "int", "long", "half", "bfloat16", "float", "double",
    "chalf", "cfloat", "cdouble",
})
GROUPS = ("general", "data-dependent", "conversion")


def group_of(op_name):
    """The group (NOTE: [OpInfo groups]) of an OpInfo, by its operator name (no variant)."""
    if op_name in DATA_DEPENDENT:
        return "data-dependent"
    if op_name in CONVERSION:
        return "conversion"
    return "general"


def _first_line(e):
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def run_cases(cases, vmap, name):
    """None when every case matches, else the first failure's message."""
    for case, expected in cases:
        try:
            with U.quiet():
                U.check_case(case, vmap, name, expected)
        except Exception as e:  # noqa: BLE001 - any failure counts
            return _first_line(e)
    return None


def run_vjp_cases(cases, vmap, vjp, name):
    for case, expected in cases:
        try:
            with U.quiet():
                U.check_vjp_case(case, vmap, vjp, name, expected)
        except Exception as e:  # noqa: BLE001
            return _first_line(e)
    return None


def check_vjp(op, name, samples):
    """The vmap(vjp) figures of one OpInfo (see NOTE: [Batched vjp cases]), or None."""
    cases = []
    for sample in samples:
        try:
            case = U.vjp_case(op, sample)
            with U.quiet():
                cases.append((case, case.reference()))
        except Exception:  # noqa: BLE001 - Skip, or a reference that errors
            continue
    if not cases:
        return None
    result = {}
    for impl, (vmap, set_fallback) in IMPLS.items():
        err = run_vjp_cases(cases, vmap, VJPS[impl], name)
        entry = {"correct": err is None, "error": err, "no_fallback": False}
        if err is None:
            set_fallback(False)
            try:
                entry["no_fallback"] = run_vjp_cases(cases, vmap, VJPS[impl], name) is None
            finally:
                set_fallback(True)
        result[impl] = entry
    return result


def check_opinfo(op, max_samples):
    name = op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")
    result = {"name": name, "group": group_of(op.name), "skipped": None}
    if U.is_random_op(op):
        result["skipped"] = "random op"
        return result
    try:
        samples = U.samples(op, max_samples)
    except U.Skip as e:
        result["skipped"] = str(e)
        return result
    cases, skips = [], collections.Counter()
    for sample in samples:
        try:
            sample_cases = U.batched_cases(U.op_callable(op), sample)
        except Exception as e:  # noqa: BLE001 - Skip, or inputs that cannot be stacked
            skips[str(e)[:60]] += 1
            continue
        for case in sample_cases:
            try:
                cases.append((case, U.reference_or_skip(case)))
            except U.Skip as e:
                skips[str(e)[:60]] += 1
    if not cases:
        result["skipped"] = skips.most_common(1)[0][0] if skips else "no tensor samples"
        return result
    _C._set_fallback_counting(True)
    _C._reset_fallback_counts()
    for impl, (vmap, set_fallback) in IMPLS.items():
        set_fallback(True)
        err = run_cases(cases, vmap, name)
        if err is not None and any(U.is_nondeterministic(c) for c, _ in cases[:3]):
            result["skipped"] = "random op (the loop reference is not deterministic)"
            break
        result[impl] = {"correct": err is None, "error": err}
        if impl == "functorch_lite":
            result["fallback_ops"] = sorted(_C._fallback_counts())
        if err is None:
            set_fallback(False)
            try:
                nofb = run_cases(cases, vmap, name)
            finally:
                set_fallback(True)
            result[impl]["no_fallback"] = nofb is None
            result[impl]["no_fallback_error"] = nofb
        else:
            result[impl]["no_fallback"] = False
    _C._set_fallback_counting(False)
    if not result["skipped"]:
        result["vjp"] = check_vjp(op, name, samples)
    return result


def _shares(entries, n):
    out = {}
    for impl in IMPLS:
        correct = sum(e[impl]["correct"] for e in entries)
        nofb = sum(e[impl]["no_fallback"] for e in entries)
        out[impl] = {"correct": correct, "no_fallback": nofb,
                     "correct_share": correct / max(n, 1), "no_fallback_share": nofb / max(n, 1)}
    return out


def summarize(results):
    """Headline figures over the general OpInfos, and one entry per group (NOTE: [OpInfo
    groups]); "skipped" counts the skipped OpInfos of every group."""
    counted = [r for r in results if not r["skipped"]]
    general = [r for r in counted if r["group"] == "general"]
    summary = {"opinfos": len(results), "counted": len(general),
               "skipped": len(results) - len(counted), **_shares(general, len(general))}
    summary["groups"] = {}
    for group in GROUPS[1:]:
        members = [r for r in counted if r["group"] == group]
        summary["groups"][group] = {"counted": len(members), **_shares(members, len(members))}
    vjps = [r["vjp"] for r in general if r.get("vjp")]
    summary["vjp"] = {"counted": len(vjps), **_shares(vjps, len(vjps))}
    return summary


def _cell(entry, key):
    return f"{entry[key]} ({100 * entry[key + '_share']:.1f}%)"


def _names(rows):
    return ", ".join(f"`{r['name']}`" for r in rows) or "(none)"


def write_markdown(results, summary, path, elapsed):
    counted = [r for r in results if not r["skipped"]]
    general = [r for r in counted if r["group"] == "general"]
    theirs_only = [r for r in counted
                   if r["torch.func"]["correct"] and not r["functorch_lite"]["correct"]]
    rules_gap = [r for r in counted if r["torch.func"]["no_fallback"]
                 and r["functorch_lite"]["correct"] and not r["functorch_lite"]["no_fallback"]]
    ours_only = [r for r in general
                 if r["functorch_lite"]["correct"] and not r["torch.func"]["correct"]]
    fallback_ops = collections.Counter()
    for r in counted:
        for o in r.get("fallback_ops", []):
            fallback_ops[o] += 1
    ours, theirs = summary["functorch_lite"], summary["torch.func"]
    vjp_ours, vjp_theirs = summary["vjp"]["functorch_lite"], summary["vjp"]["torch.func"]
    vjp_gap = [r for r in counted if r.get("vjp") and r["vjp"]["torch.func"]["correct"]
               and not r["vjp"]["functorch_lite"]["correct"]]
    lines = [
        "# vmap OpInfo coverage",
        "",
        "Generated by `python benchmarks/opinfo_coverage.py` (torch "
        f"{torch.__version__}, CPU, float32; {elapsed / 60:.1f} min). Every OpInfo of torch's "
        "`op_db` and its samples, each tensor argument batched at dim 0 and at the last dim, "
        "alone and all together, plus two nested vmap levels, compared with a for-loop. Every "
        "sample of a batch has its own data: floating tensors scaled, integer and bool tensors "
        "(indices, masks) permuted (see NOTE: [Batched OpInfo cases] in "
        "test/vmap_opinfo_utils.py). Both vmaps run on the same inputs in the same process, "
        "with the same tolerances (NOTE: [OpInfo tolerances]).",
        "",
        f"{summary['opinfos']} OpInfos, {summary['counted']} counted, {summary['skipped']} "
        "skipped (no float32, the loop reference errors, random ops). Data-dependent operators "
        "and dtype conversions are not counted in the headline rows; they have their own rows "
        "(NOTE: [OpInfo groups] in benchmarks/opinfo_coverage.py).",
        "",
        "| | functorch_lite.vmap | torch.func.vmap |",
        "| --- | --- | --- |",
        f"| OpInfos fully correct | {_cell(ours, 'correct')} | {_cell(theirs, 'correct')} |",
        f"| correct without the for-loop fallback | {_cell(ours, 'no_fallback')} "
        f"| {_cell(theirs, 'no_fallback')} |",
    ]
    for group, entry in summary["groups"].items():
        lines.append(f"| {group} OpInfos ({entry['counted']}) fully correct "
                     f"| {_cell(entry['functorch_lite'], 'correct')} "
                     f"| {_cell(entry['torch.func'], 'correct')} |")
    lines += [
        "",
        "Backward operators: vmap over vjp (what vmap(grad) and jacrev run), every floating "
        "input and a cotangent batched, on the counted OpInfos with differentiable samples "
        f"({summary['vjp']['counted']}):",
        "",
        "| | functorch_lite | torch.func |",
        "| --- | --- | --- |",
        f"| vmap(vjp) fully correct | {_cell(vjp_ours, 'correct')} "
        f"| {_cell(vjp_theirs, 'correct')} |",
        f"| correct without the for-loop fallback | {_cell(vjp_ours, 'no_fallback')} "
        f"| {_cell(vjp_theirs, 'no_fallback')} |",
        "",
        f"## torch.func correct, functorch_lite not ({len(theirs_only)})",
        "",
        "| OpInfo | first error |",
        "| --- | --- |",
    ]
    for r in theirs_only:
        err = (r["functorch_lite"]["error"] or "").replace("|", "\\|")
        lines.append(f"| `{r['name']}` | {err} |")
    lines += [
        "",
        f"## vmap(vjp): torch.func correct, functorch_lite not ({len(vjp_gap)})",
        "",
        "| OpInfo | first error |",
        "| --- | --- |",
    ]
    for r in vjp_gap:
        err = (r["vjp"]["functorch_lite"]["error"] or "").replace("|", "\\|")
        lines.append(f"| `{r['name']}` | {err} |")
    lines += [
        "",
        f"## Correct on both, but ours needs the fallback where torch.func does not "
        f"({len(rules_gap)})",
        "",
        _names(rules_gap),
        "",
        f"## functorch_lite correct, torch.func not ({len(ours_only)})",
        "",
        _names(ours_only),
        "",
    ]
    for group in GROUPS[1:]:
        members = [r for r in counted if r["group"] == group]
        lines += [
            f"## {group.capitalize()} OpInfos ({len(members)})",
            "",
            "| OpInfo | functorch_lite | torch.func |",
            "| --- | --- | --- |",
        ]
        for r in members:
            cells = [("correct" if r[impl]["correct"] else "fails") +
                     ("" if r[impl]["no_fallback"] or not r[impl]["correct"] else
                      " (fallback)") for impl in IMPLS]
            lines.append(f"| `{r['name']}` | {cells[0]} | {cells[1]} |")
        lines.append("")
    lines += [
        "## Operators that still reach our for-loop fallback (number of OpInfos)",
        "",
        ", ".join(f"`{o}` ({c})" for o, c in fallback_ops.most_common()) or "(none)",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-samples", type=int, default=12,
                        help="samples per OpInfo (default 12)")
    parser.add_argument("--ops", default="", help="comma-separated OpInfo names (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    opts = parser.parse_args()

    from torch.testing._internal.common_methods_invocations import op_db

    _C._set_vmap_fallback_warning_enabled(False)
    wanted = set(filter(None, opts.ops.split(",")))
    ops = [op for op in op_db if not wanted or op.name in wanted]
    results = []
    start = time.time()
    for i, op in enumerate(ops):
        t0 = time.time()
        r = check_opinfo(op, opts.max_samples)
        results.append(r)
        if r["skipped"]:
            status = f"skip ({r['skipped'][:70]})"
        else:
            status = " ".join(
                f"{impl}={'ok' if r[impl]['correct'] else 'FAIL'}"
                f"{'' if r[impl]['no_fallback'] else '(fb)' if r[impl]['correct'] else ''}"
                for impl in IMPLS)
            if not r["functorch_lite"]["correct"]:
                status += f"  [{r['functorch_lite']['error'][:100]}]"
        print(f"[{i + 1}/{len(ops)}] {r['name']}: {status} ({time.time() - t0:.1f}s)",
              flush=True)
    elapsed = time.time() - start
    summary = summarize(results)
    print(json.dumps(summary, indent=2))
    if opts.no_write:
        return
    origin = provenance(__file__)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "opinfo_coverage.json"), "w") as f:
        json.dump({"provenance": origin, "summary": summary, "results": results}, f, indent=1)
    # the copy docs/benchmarks.md quotes: the summary and where it came from
    with open(os.path.join(ROOT, "docs", "data", "opinfo_coverage.json"), "w") as f:
        json.dump({"provenance": origin, "summary": summary}, f, indent=2)
    write_markdown(results, summary, os.path.join(ROOT, "docs", "opinfo_coverage.md"), elapsed)


if __name__ == "__main__":
    main()
