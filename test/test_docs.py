"""Docs as tests: the Python examples of README.md and docs/*.md, and the benchmark figures.

NOTE: [Docs as tests]
- Every ```python block of a Markdown file runs, in order, in one namespace made fresh for
  that file (so a page's examples may build on each other, and pages never share state).
- A ```text block that follows a ```python block (nothing but blank lines between) is that
  block's printed output: it must equal what the block prints (trailing spaces, leading and
  trailing blank lines and repeated blank lines aside).
- A block fenced ```python no-run REASON is only compiled, not run. It is for code that cannot
  run offline on a CPU-only machine (a GPU, a download); REASON, next to the fence, says why,
  and is required.
- docs/benchmarks.md quotes its figures between generated-table markers:
      <!-- begin: RENDERER data/FILE -->  ...  <!-- end: RENDERER -->
  The text between them must be exactly what RENDERER (in RENDERERS below) makes of
  docs/data/FILE, the copy of the benchmark's JSON that the page quotes; every image the page
  links must exist.
- docs/api.md has an entry (a level-3 heading naming `module.name` in backticks, then a
  ```text block with the signature as inspect.signature prints it) for every name in the __all__ of functorch_lite,
  functorch_lite.experimental, functorch_lite.compile and functorch_lite.dp, and for no other name.
- Relative links and their #anchors resolve; docs/quickstart.md shows README's install commands.
- A page that stops at a name listed in test_compat.KNOWN_MISSING (documented ahead of its
  landing) is an xfail naming it, not a failure.

`python test/test_docs.py --update [FILE.md ...]` rewrites the output blocks and the
generated tables from what the code prints and what the data files hold; review the diff.
"""
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import re
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
BENCHMARKS_MD = DOCS / "benchmarks.md"

FENCE = re.compile(r"^```(.*)$")


class Block:
    def __init__(self, info, first_line, lines):
        self.info = info.strip()
        self.words = self.info.split()
        self.lang = self.words[0] if self.words else ""
        self.first_line = first_line  # 1-based line number of the first code line
        self.lines = lines
        self.output = None  # the ```text block that follows, if any

    @property
    def code(self):
        return "".join(self.lines)

    @property
    def no_run(self):
        return self.lang == "python" and len(self.words) > 1 and self.words[1] == "no-run"


def parse_blocks(text):
    """All fenced blocks of a Markdown text, each python block with its output block."""
    blocks, lines, i = [], text.splitlines(keepends=True), 0
    last_end = None  # line index just after the previous block's closing fence
    while i < len(lines):
        m = FENCE.match(lines[i].rstrip("\n"))
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        block = Block(m.group(1), start + 2, lines[start + 1:j])
        prev = blocks[-1] if blocks else None
        between = lines[last_end:start] if last_end is not None else ["x"]
        if (block.lang == "text" and prev is not None and prev.lang == "python"
                and all(not s.strip() for s in between)):
            prev.output = block
        blocks.append(block)
        i = last_end = j + 1
    return blocks


def python_blocks(path):
    return [b for b in parse_blocks(path.read_text()) if b.lang == "python"]


def _normalized(text):
    """Trailing spaces, leading and trailing blank lines and runs of blank lines don't count."""
    lines = [line.rstrip() for line in text.splitlines()]
    kept = [s for i, s in enumerate(lines) if s or (i > 0 and lines[i - 1])]
    return "\n".join(kept).strip("\n")


@contextlib.contextmanager
def _global_state_kept():
    """Restores what a page may change globally: print options, RNG, default dtype, grad mode."""
    print_opts = dict(vars(torch._tensor_str.PRINT_OPTS))
    dtype, grad_enabled = torch.get_default_dtype(), torch.is_grad_enabled()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        vars(torch._tensor_str.PRINT_OPTS).update(print_opts)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad_enabled)


def run_blocks(path, on_output=None):
    """Runs the python blocks of `path` in one fresh namespace; checks their printed output.

    `on_output(block, printed)` replaces the check (used by --update)."""
    with _global_state_kept():
        _run_blocks(path, on_output)


def _known_missing_name(error):
    """`functorch_lite.NAME` when `error` is the AttributeError of a name in KNOWN_MISSING."""
    from test_compat import KNOWN_MISSING

    m = re.fullmatch(r"module '([\w.]+)' has no attribute '(\w+)'", str(error))
    name = m and f"{m.group(1)}.{m.group(2)}"
    return name if isinstance(error, AttributeError) and name in KNOWN_MISSING else None


def _run_blocks(path, on_output):
    """See NOTE: [Docs as tests]. A block that stops at a name test_compat.KNOWN_MISSING lists
    (documented ahead of its landing) does not fail the page; the page is an xfail naming it."""
    namespace = {"__name__": f"docs:{path.name}"}
    missing = set()
    for block in python_blocks(path):
        if block.no_run:
            compile(block.code, f"{path}:{block.first_line}", "exec")
            continue
        code = compile("\n" * (block.first_line - 1) + block.code, str(path), "exec")
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), warnings.catch_warnings():
                # torch's own (torch.jit.script inside forward AD); other warnings, such as a
                # for-loop fallback an example runs into, still show in pytest's summary
                warnings.simplefilter("ignore", DeprecationWarning)
                exec(code, namespace)
        except Exception as e:
            name = _known_missing_name(e)
            if name is not None and on_output is None:
                missing.add(name)
                continue
            pytest.fail(
                f"{path.relative_to(ROOT)}: the block at line {block.first_line} raised:\n"
                f"{traceback.format_exc()}\nprinted before that:\n{printed.getvalue()}",
                pytrace=False,
            )
        if on_output is not None:
            on_output(block, printed.getvalue())
        elif block.output is not None:
            expected = _normalized(block.output.code)
            actual = _normalized(printed.getvalue())
            assert actual == expected, (
                f"{path.relative_to(ROOT)}: the block at line {block.first_line} printed\n"
                f"{actual}\n\nbut the page shows (line {block.output.first_line})\n{expected}"
            )
    if missing:
        pytest.xfail(f"{path.name} uses names not implemented yet (test_compat.KNOWN_MISSING): "
                     f"{sorted(missing)}")


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path):
    run_blocks(path)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_run_blocks_say_why(path):
    for block in python_blocks(path):
        if len(block.words) > 1:
            assert block.no_run, f"{path.name}:{block.first_line}: unknown fence ```{block.info}"
        if block.no_run:
            reason = " ".join(block.words[2:])
            assert reason, (
                f"{path.name}:{block.first_line}: a ```python no-run block must say why it cannot "
                f"run offline, next to the fence: ```python no-run (needs a CUDA GPU)"
            )


def _prose(text):
    return re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S)


def _anchors(path):
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to -."""
    headings = re.findall(r"^#+ (.*)$", _prose(path.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    prose = re.sub(r"`[^`\n]*`", "", _prose(path.read_text()))
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = path.parent / file if file else path
        assert linked.exists(), f"{path.name} links missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{path.name} links missing heading {target}"


def _sh_blocks_under(path, heading):
    pattern = rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)"
    section = re.search(pattern, path.read_text(), re.M | re.S)
    return [b.code for b in parse_blocks(section.group(1)) if b.lang == "sh"]


def test_quickstart_installs_as_the_readme_says():
    readme = ROOT / "README.md"
    quickstart = _sh_blocks_under(DOCS / "quickstart.md", "Install")
    for heading in ("Two commands", "Installing into your environment"):
        for block in _sh_blocks_under(readme, heading):
            commands = [line.split("#")[0].split() for line in block.splitlines()]
            shown = [[line.split("#")[0].split() for line in b.splitlines()] for b in quickstart]
            assert commands in shown, f"quickstart.md should show README's {heading!r}:\n{block}"


# --- generated benchmark tables ---------------------------------------------------------------

def _benchmark_common():
    """benchmarks/common.py, whose ratio_text formats ratios the same way the scripts print them."""
    spec = importlib.util.spec_from_file_location("benchmark_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ms(seconds):
    return f"{seconds * 1e3:.2f}"


def _ms_spread(row, column):
    """A median in ms, with its interquartile range when the row records one."""
    spread = row.get("spread", {}).get(column)
    if spread is None:
        return _ms(row[column])
    return f"{_ms(row[column])} ({_ms(spread[0])}-{_ms(spread[1])})"


def _ratio(row, name, fallback):
    """A recorded paired ratio (median, interquartile range, ≈1.0 when it holds 1.0)."""
    stats = row.get("ratios", {}).get(name)
    return _benchmark_common().ratio_text(stats) if stats else f"{fallback:.2f}"


def _machine_line(data):
    m = data["machine"]
    line = (f"Measured on: Python {m['python']}, torch {m['torch']}, {m['processor']}, "
            f"{m['cpus']} CPUs")
    if "threads" in m:
        line += f", {m['threads']} torch threads"
    if "load_average" in m:
        one, five, fifteen = m["load_average"]
        line += f"; load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) at the end"
    commit = data.get("provenance", {}).get("commit")
    if commit:
        line += f"; commit {commit[:10]}"
    return line + "."


def render_three_way(data):
    """functorch_lite / torch.func / loop (/ opacus) medians (per_sample_grads.py, ensembling.py)."""
    extra = [c for c in ("no pool", "opacus") if c in data["rows"][0]]
    head = ["case", "functorch_lite (ms)", "torch.func (ms)", "loop (ms)"]
    head += [f"{c} (ms)" for c in extra] + ["functorch_lite / torch.func", "loop / functorch_lite"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in data["rows"]:
        ours, theirs, loop = r["functorch_lite"], r["torch.func"], r["loop"]
        cells = [r["case"]] + [_ms_spread(r, c) for c in ("functorch_lite", "torch.func", "loop")]
        cells += [_ms_spread(r, c) for c in extra]
        cells += [_ratio(r, "functorch_lite / torch.func", ours / theirs), f"{loop / ours:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", _machine_line(data)]


def render_compile(data):
    """bench_compile.py: eager vs compiled medians, speedups and compile times."""
    compilers = [k[: -len(" compile s")] for k in data["rows"][0] if k.endswith(" compile s")]
    head = ["case", "traced transforms", "torch.func eager (ms)"]
    head += [f"{c} (ms)" for c in compilers] + [f"speedup {c}" for c in compilers]
    head += [f"compile {c} (s)" for c in compilers]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for r in data["rows"]:
        eager = r["torch.func eager"]
        cells = [r["case"], r["transforms"], _ms_spread(r, "torch.func eager")]
        cells += [_ms_spread(r, c) for c in compilers]
        cells += [_ratio(r, f"torch.func eager / {c}", eager / r[c]) for c in compilers]
        cells += [f"{r[f'{c} compile s']:.2f}" for c in compilers]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", _machine_line(data)]


def render_opinfo(data):
    """opinfo_coverage.py's summary."""
    s = data["summary"]
    lines = [
        f"{s['opinfos']} OpInfos, {s['counted']} counted, "
        + "".join(f"{g['counted']} {name} ones in their own row, "
                  for name, g in s.get("groups", {}).items())
        + f"{s['skipped']} skipped.",
        "",
        "| | functorch_lite.vmap | torch.func.vmap |",
        "| --- | ---: | ---: |",
    ]
    for label, key in (("fully correct", "correct"),
                       ("correct without the for-loop fallback", "no_fallback")):
        cells = [f"{s[impl][key]} ({100 * s[impl][key + '_share']:.1f}%)"
                 for impl in ("functorch_lite", "torch.func")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    for group, g in s.get("groups", {}).items():  # NOTE: [OpInfo groups] in opinfo_coverage.py
        cells = [f"{g[impl]['correct']} ({100 * g[impl]['correct_share']:.1f}%)"
                 for impl in ("functorch_lite", "torch.func")]
        lines.append(f"| {group} OpInfos ({g['counted']}), fully correct | {cells[0]} | {cells[1]} |")
    return lines


def render_output(data):
    """What a benchmark printed (recorded by benchmarks/record_output.py, or written by the
    script itself with write_results(output=...)), with the machine."""
    command = data.get("command") or f"python {Path(data['provenance']['script']).name}"
    return [f"`{command}` printed:", "", "```text",
            *data["output"].rstrip("\n").splitlines(), "```", "", _machine_line(data)]


def render_printed(data):
    """The table a benchmark printed, as it printed it (README's `make demo` output)."""
    return ["```text", *data["output"].rstrip("\n").splitlines(), "```"]


RENDERERS = {
    "three-way": render_three_way,
    "compile": render_compile,
    "opinfo": render_opinfo,
    "output": render_output,
    "printed": render_printed,
}

MARKER = re.compile(r"^<!-- begin: (\S+) (\S+) -->\n(.*?)^<!-- end: \1 -->$", re.M | re.S)
# Pages that quote benchmark figures; their sources are relative to docs/.
FIGURE_PAGES = [BENCHMARKS_MD, ROOT / "README.md"]


def rendered(renderer, source):
    data = json.loads((DOCS / source).read_text())
    return "\n".join(RENDERERS[renderer](data)) + "\n"


def generated_tables(text):
    return [(m.group(1), m.group(2), m.group(3), m) for m in MARKER.finditer(text)]


def quoted_tables():
    """(page, renderer, source, body) of every generated table of the pages that quote figures."""
    return [(page, *table[:3]) for page in FIGURE_PAGES
            for table in generated_tables(page.read_text())]


def test_benchmark_tables_match_their_data():
    text = BENCHMARKS_MD.read_text()
    assert generated_tables(text), "docs/benchmarks.md quotes no generated table"
    for page in FIGURE_PAGES:
        text = page.read_text()
        assert text.count("<!-- begin:") == len(generated_tables(text)), (
            f"{page.name}: a begin marker without its end marker")
    for page, renderer, source, body in quoted_tables():
        assert renderer in RENDERERS, f"unknown renderer {renderer!r}"
        assert (DOCS / source).is_file(), f"{page.name} quotes missing {source}"
        assert body == rendered(renderer, source), (
            f"{page.name}: the {renderer} table from {source} does not match the data; "
            f"run `python test/test_docs.py --update {page.relative_to(ROOT)}`"
        )


def test_benchmark_charts_exist():
    text = BENCHMARKS_MD.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images, "docs/benchmarks.md shows no chart"
    for image in images:
        assert (DOCS / image).is_file(), f"docs/benchmarks.md links missing {image}"


def test_quoted_data_carries_its_machine():
    for page, renderer, source, _ in quoted_tables():
        data = json.loads((DOCS / source).read_text())
        if renderer != "opinfo":  # opinfo_coverage.py counts, it does not time
            assert set(data["machine"]) >= {"python", "torch", "processor", "cpus"}, source


def test_quoted_data_comes_from_the_scripts_as_they_are():
    """Every quoted JSON names the commit and the script that wrote it, and the script's hash
    then equals its hash now: a changed benchmark must be run again before its figures show."""
    for page, _, source, _ in quoted_tables():
        data = json.loads((DOCS / source).read_text())
        origin = data.get("provenance")
        assert origin and origin.get("commit") and origin.get("script"), (
            f"{source} does not say which commit and script wrote it")
        script = ROOT / origin["script"]
        assert script.is_file(), f"{source} was written by {origin['script']}, which is gone"
        digest = hashlib.sha256(script.read_bytes()).hexdigest()
        assert digest == origin["script_sha256"], (
            f"{page.name} quotes {source}, written by {origin['script']} as it was at commit "
            f"{origin['commit'][:10]}; the script has changed since: run it again and copy its JSON")


# A measured figure: a number with a unit of time, a speedup or a ratio ("3.55 ms", "4.4x").
FIGURE = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|µs|us|s|seconds|x|×)(?!\w)")


def test_figures_in_prose_come_from_data():
    """Outside generated tables and code, the pages that quote benchmarks state no measured
    figure: a number typed into prose would not follow the data when it is measured again."""
    for page in FIGURE_PAGES:
        prose = _prose(MARKER.sub("", page.read_text()))
        prose = re.sub(r"`[^`\n]*`", "", prose)
        figures = FIGURE.findall(prose)
        assert not figures, (
            f"{page.name} states figures outside its generated tables: {figures}; quote them "
            f"from the data (a generated table) instead")


# --- docs/api.md: every public name, with its signature ----------------------------------------

API_MD = DOCS / "api.md"
PUBLIC_MODULES = ["functorch_lite", "functorch_lite.experimental", "functorch_lite.compile",
                  "functorch_lite.dp"]
API_ENTRY = re.compile(r"^### `([\w.]+)`\n\n```text\n(.*?)\n```$", re.M | re.S)


def signature_line(name, obj):
    """`name(signature)` as inspect.signature prints it (defaults that are functions by name)."""
    if not callable(obj):
        return f"{name}: {type(obj).__name__}"
    signature = str(inspect.signature(obj))
    return name + re.sub(r"<function (\w+) at 0x[0-9a-f]+>", r"\1", signature)


def public_api():
    """{qualified name: signature line} for every name in the public modules' __all__."""
    api = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            api[f"{module_name}.{name}"] = signature_line(name, getattr(module, name))
    return api


def reexported_from_torch(qualified_name):
    """Whether a public name is torch's own object (make_fx): its signature is torch's, and
    differs between the supported torch versions."""
    module_name, _, name = qualified_name.rpartition(".")
    obj = getattr(importlib.import_module(module_name), name)
    return getattr(obj, "__module__", "").startswith("torch.")


def test_api_md_has_every_public_name_with_its_signature():
    text = API_MD.read_text()
    headings = re.findall(r"^### `([\w.]+)`", text, re.M)
    entries = {m.group(1): m.group(2) for m in API_ENTRY.finditer(text)}
    api = public_api()
    missing = sorted(set(api) - set(headings))
    from test_compat import KNOWN_MISSING  # documented ahead of landing: their entries may stay

    stale = sorted(set(headings) - set(api) - KNOWN_MISSING)
    assert not missing, f"docs/api.md has no entry for {missing}"
    assert not stale, f"docs/api.md documents names that are not public: {stale}"
    for name, signature in api.items():  # an entry written ahead is checked once it lands
        if reexported_from_torch(name):
            assert entries.get(name, "").startswith(name.rpartition(".")[2] + "("), name
            continue
        assert entries.get(name) == signature, (
            f"docs/api.md: the entry of {name} should open with its signature\n{signature}\n"
            f"but shows\n{entries.get(name)}\n(`python test/test_docs.py --update docs/api.md`)"
        )


# --- python test/test_docs.py --update ---------------------------------------------------------

def _update(path):
    text = path.read_text()
    if path in FIGURE_PAGES:
        text = MARKER.sub(
            lambda m: (f"<!-- begin: {m.group(1)} {m.group(2)} -->\n"
                       f"{rendered(m.group(1), m.group(2))}<!-- end: {m.group(1)} -->"),
            text,
        )
        path.write_text(text)
    if path == API_MD:
        api = public_api()
        text = API_ENTRY.sub(
            lambda m: (f"### `{m.group(1)}`\n\n```text\n{api.get(m.group(1), m.group(2))}\n```"),
            text,
        )
        path.write_text(text)
    lines = text.splitlines(keepends=True)
    edits = []

    def record(block, printed):
        if block.output is not None:
            first, last = block.output.first_line - 1, block.output.first_line - 1 + len(
                block.output.lines)
            edits.append((first, last, _normalized(printed) + "\n"))

    run_blocks(path, on_output=record)
    for first, last, new in sorted(edits, reverse=True):
        lines[first:last] = [new]
    path.write_text("".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] != ["--update"]:
        sys.exit("usage: python test/test_docs.py --update [FILE.md ...]  (tests: pytest)")
    for name in sys.argv[2:] or [str(p) for p in DOC_FILES]:
        _update(Path(name).resolve())
        print(f"updated {name}")
