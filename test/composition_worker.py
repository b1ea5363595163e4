"""Runs composition programs against torch.func, in a process that may crash.

A program is the source of `f(x)` plus a stack of transforms (innermost first) and the shape of
`x` before any vmap adds its batch dimension. `compare(...)` builds the stacked function twice,
once from functorch_lite and once from torch.func, calls both on the same input and says how
they differ. Run as a script, this module is the persistent worker of the composition tests:
it reads one JSON request a line from stdin and answers one JSON line on stdout, so a segfault
costs one example and one restart, not the test run (see WorkerPool).
"""
import json
import os
import re
import select
import subprocess
import sys
import traceback

B = 3  # the batch size of every vmap


def _stacked(T, f, stack):
    """Applies the transforms of `stack` (innermost first) to f, with the transform module T."""
    h = f
    for kind, opts in stack:
        h = _TRANSFORMS[kind](T, h, **opts)
    return h


def _grad(T, h):
    return T.grad(lambda x: h(x).sum())


def _vjp(T, h):
    def run(x):
        out, fn = T.vjp(h, x)
        return fn(_ones(out))[0]

    return run


def _ones(t):
    import torch

    return torch.ones_like(t)


def _jvp(T, h):
    return lambda x: T.jvp(h, (x,), (_ones(x),))[1]


def _jacrev(T, h):
    return T.jacrev(h)


def _jacfwd(T, h):
    return T.jacfwd(h)


def _vmap(T, h, in_dims=0, out_dims=0):
    return T.vmap(h, in_dims=in_dims, out_dims=out_dims)


def _functionalize(T, h, remove="mutations"):
    return T.functionalize(h, remove=remove)


_TRANSFORMS = {"grad": _grad, "vjp": _vjp, "jvp": _jvp, "jacrev": _jacrev, "jacfwd": _jacfwd,
               "vmap": _vmap, "functionalize": _functionalize}


def input_shape(shape, stack):
    """The shape of the outermost input: each vmap, innermost first, adds B at its in_dims."""
    shape = list(shape)
    for kind, opts in stack:
        if kind == "vmap":
            shape.insert(opts.get("in_dims", 0), B)
    return shape


def describe(source, stack, shape):
    """The program as text, to print with a failure and to paste into a regression test."""
    calls = " -> ".join(
        kind + ("(" + ", ".join(f"{k}={v!r}" for k, v in opts.items()) + ")" if opts else "")
        for kind, opts in stack)
    return f"{source}\n# transforms, innermost first: {calls}\n# x: {list(shape)}"


def _call(T, source, stack, shape, seed):
    import torch

    namespace = {"torch": torch}
    exec(compile(source, "<program>", "exec"), namespace)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape(shape, stack), generator=gen, dtype=torch.float64)
    try:
        return "ok", _stacked(T, namespace["f"], stack)(x)
    except Exception as e:  # noqa: BLE001 - any error is an outcome to compare
        return "error", f"{type(e).__name__}: {e}".splitlines()[0][:300]


def _leaked_state():
    """What a finished call left behind (a live level, functionalization on), or ''."""
    import torch

    from functorch_lite import _C

    if _C._layer_depth() != 0:
        return "a live transform level"
    if torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Functionalize):
        return "functionalization enabled"
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "a live torch.func level"
    return ""


# Our errors for calls torch.func accepts without a meaningful result (docs/limitations.md):
# an out_dim past the end of an output that is not batched, where torch.func's
# _remove_batch_dim inserts the batch size beyond the end of the size vector (undefined
# behaviour in C++; a batched output gets the same IndexError from both).
_INVALID_ACCEPTED_BY_TORCH_FUNC = re.compile(
    r"^IndexError: vmap\(.*out_dims=.*\): Dimension out of range .* out_dim=-?\d+ for an output "
    r"with \d+ dimension\(s\) per sample")


def compare(source, stack, shape, seed=0):
    """{'outcome': ..., 'detail': ...}; outcome is one of
    'same'           both give equal results;
    'both_raise'     both raise;
    'mismatch'       both give results, and they differ;
    'ours_raises'    torch.func gives a result and functorch_lite raises;
    'theirs_raises'  functorch_lite gives a result where torch.func raises;
    'theirs_accepts_invalid'
                     functorch_lite rejects the call with an error and torch.func computes
                     something it should have rejected (see _INVALID_ACCEPTED_BY_TORCH_FUNC);
    'leaked_state'   functorch_lite left a level or functionalization behind;
    'theirs_leaked'  torch.func did (the worker restarts, the example is not judged)."""
    import warnings

    import torch
    import torch.func

    import functorch_lite

    stack = [(kind, dict(opts)) for kind, opts in stack]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = _call(functorch_lite, source, stack, shape, seed)
        leaked = _leaked_state()
        if leaked:
            return {"outcome": "leaked_state", "detail": f"functorch_lite left {leaked}"}
        theirs = _call(torch.func, source, stack, shape, seed)
        if _leaked_state():
            # torch.func left its own state behind: the next example needs a fresh process
            return {"outcome": "theirs_leaked", "detail": _leaked_state(), "restart": True}
    if ours[0] == "error" and theirs[0] == "error":
        return {"outcome": "both_raise", "detail": f"ours: {ours[1]}; theirs: {theirs[1]}"}
    if ours[0] == "error":
        if _INVALID_ACCEPTED_BY_TORCH_FUNC.search(ours[1]):
            return {"outcome": "theirs_accepts_invalid", "detail": ours[1]}
        return {"outcome": "ours_raises", "detail": ours[1]}
    if theirs[0] == "error":
        return {"outcome": "theirs_raises", "detail": theirs[1]}
    try:
        torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-6, equal_nan=True)
    except (AssertionError, TypeError, RuntimeError) as e:
        return {"outcome": "mismatch", "detail": str(e)[:600]}
    return {"outcome": "same", "detail": ""}


class WorkerPool:
    """One persistent worker process; a dead or hung worker is a 'crash' and is replaced."""

    def __init__(self, timeout=120.0):
        self.timeout = timeout
        self.proc = None

    def _start(self):
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONFAULTHANDLER"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def run(self, source, stack, shape, seed=0):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        request = {"source": source, "stack": stack, "shape": list(shape), "seed": seed}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
            line = self.proc.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if line:
            return json.loads(line)
        return {"outcome": "crash", "detail": self._reap(hung=not ready)}

    def _reap(self, hung):
        proc, self.proc = self.proc, None
        if hung:
            proc.kill()
        proc.wait()
        stderr = proc.stderr.read()[-3000:]
        what = "hung" if hung else f"died with exit code {proc.returncode}"
        return f"the worker {what}\n{stderr}"

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.proc = None


def _serve():
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = compare(request["source"], request["stack"], request["shape"],
                             request["seed"])
        except Exception:  # noqa: BLE001 - a harness error is reported, not fatal
            answer = {"outcome": "harness_error", "detail": traceback.format_exc()[-2000:]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if answer.get("restart") or answer["outcome"] == "leaked_state":
            return


if __name__ == "__main__":
    _serve()
