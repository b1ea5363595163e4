"""OpInfo coverage of vmap: functorch_lite.vmap next to torch.func.vmap on the same inputs.

For every OpInfo in torch's op_db (float32, CPU) and its samples, both vmaps run every batched
case of test/vmap_opinfo_utils.py (see NOTE: [Batched OpInfo cases]) against the for-loop
reference. An OpInfo is "correct" when every case matches, and "without fallback" when it is
correct with the for-loop fallback disabled (its ops have batching rules or decompose into ops
that do). OpInfos whose samples all skip (the loop reference errors, random ops, no float32) are
left out of both shares. A second table does the same for vmap over vjp (the backward operators
that vmap(grad) and jacrev run; see NOTE: [Batched vjp cases]).

    python benchmarks/opinfo_coverage.py [--max-samples N] [--ops name,name] [--no-write]

Writes docs/opinfo_coverage.md and benchmarks/results/opinfo_coverage.json.
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


def _ours_fallback(enabled):
    _C._set_vmap_fallback_enabled(enabled)


def _theirs_fallback(enabled):
    torch._C._functorch._set_vmap_fallback_enabled(enabled)


IMPLS = {
    "functorch_lite": (functorch_lite.vmap, _ours_fallback),
    "torch.func": (torch.func.vmap, _theirs_fallback),
}
VJPS = {"functorch_lite": functorch_lite.vjp, "torch.func": torch.func.vjp}


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
    result = {"name": name, "skipped": None}
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


def summarize(results):
    counted = [r for r in results if not r["skipped"]]
    n = len(counted)
    summary = {"opinfos": len(results), "counted": n, "skipped": len(results) - n}
    for impl in IMPLS:
        correct = sum(r[impl]["correct"] for r in counted)
        nofb = sum(r[impl]["no_fallback"] for r in counted)
        summary[impl] = {"correct": correct, "no_fallback": nofb,
                         "correct_share": correct / max(n, 1), "no_fallback_share": nofb / max(n, 1)}
    vjps = [r["vjp"] for r in counted if r.get("vjp")]
    summary["vjp"] = {"counted": len(vjps)}
    for impl in IMPLS:
        correct = sum(v[impl]["correct"] for v in vjps)
        nofb = sum(v[impl]["no_fallback"] for v in vjps)
        summary["vjp"][impl] = {"correct": correct, "no_fallback": nofb,
                                "correct_share": correct / max(len(vjps), 1),
                                "no_fallback_share": nofb / max(len(vjps), 1)}
    return summary


def write_markdown(results, summary, path, elapsed):
    counted = [r for r in results if not r["skipped"]]
    theirs_only = [r for r in counted
                   if r["torch.func"]["correct"] and not r["functorch_lite"]["correct"]]
    rules_gap = [r for r in counted if r["torch.func"]["no_fallback"]
                 and r["functorch_lite"]["correct"] and not r["functorch_lite"]["no_fallback"]]
    ours_only = [r for r in counted
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
        "alone and all together, plus two nested vmap levels, compared with a for-loop "
        "(see NOTE: [Batched OpInfo cases] in test/vmap_opinfo_utils.py). Both vmaps run on "
        "the same inputs in the same process.",
        "",
        f"{summary['opinfos']} OpInfos, {summary['counted']} counted, {summary['skipped']} "
        "skipped (no float32, the loop reference errors, random ops).",
        "",
        "| | functorch_lite.vmap | torch.func.vmap |",
        "| --- | --- | --- |",
        f"| OpInfos fully correct | {ours['correct']} ({100 * ours['correct_share']:.1f}%) "
        f"| {theirs['correct']} ({100 * theirs['correct_share']:.1f}%) |",
        f"| correct without the for-loop fallback | {ours['no_fallback']} "
        f"({100 * ours['no_fallback_share']:.1f}%) | {theirs['no_fallback']} "
        f"({100 * theirs['no_fallback_share']:.1f}%) |",
        "",
        "Backward operators: vmap over vjp (what vmap(grad) and jacrev run), every floating "
        "input and a cotangent batched, on the OpInfos with differentiable samples "
        f"({summary['vjp']['counted']}):",
        "",
        "| | functorch_lite | torch.func |",
        "| --- | --- | --- |",
        f"| vmap(vjp) fully correct | {vjp_ours['correct']} "
        f"({100 * vjp_ours['correct_share']:.1f}%) | {vjp_theirs['correct']} "
        f"({100 * vjp_theirs['correct_share']:.1f}%) |",
        f"| correct without the for-loop fallback | {vjp_ours['no_fallback']} "
        f"({100 * vjp_ours['no_fallback_share']:.1f}%) | {vjp_theirs['no_fallback']} "
        f"({100 * vjp_theirs['no_fallback_share']:.1f}%) |",
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
        ", ".join(f"`{r['name']}`" for r in rules_gap) or "(none)",
        "",
        f"## functorch_lite correct, torch.func not ({len(ours_only)})",
        "",
        ", ".join(f"`{r['name']}`" for r in ours_only) or "(none)",
        "",
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
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "opinfo_coverage.json"), "w") as f:
        json.dump({"summary": summary, "results": results}, f, indent=1)
    write_markdown(results, summary, os.path.join(ROOT, "docs", "opinfo_coverage.md"), elapsed)


if __name__ == "__main__":
    main()
