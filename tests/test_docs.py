"""Every code block of README.md and docs/ runs as pasted, and every figure cites a run that exists.

Python blocks: the blocks of one page run in order as one script (a fresh interpreter, a temporary
working directory), as a reader pasting them into a file would run them; a page whose first lines
hold ``<!-- docs-test: requires dask distributed -->`` is skipped unless those modules import, and a
block preceded by ``<!-- docs-test: skip REASON -->`` is left out (the reason says why: a data set
that must be downloaded, a GPU). Shell blocks: every ``python -m fastact ...`` line parses with the
command line's own parser, and every script it names exists.

Figures: each ``bench/results/...`` path named in the docs exists, and each image in docs/images
names the run it was drawn from (PNG metadata written by ``fastact.plots``), which exists and, for
the benchmark figures, is the newest one.
"""

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + \
    sorted(glob.glob(os.path.join(ROOT, "docs", "*.rst"))) + [os.path.join(ROOT, "kernels", "README.md"),
                                                             os.path.join(ROOT, "bench", "README.md")]
_ID = [os.path.relpath(p, ROOT) for p in PAGES]

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w{}-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
_RST = re.compile(r"^\.\. code-block:: (?P<lang>\w+)\n(?:[ \t]+:[^\n]*\n)*\n(?P<body>(?:(?:[ \t]+[^\n]*)?\n)+)",
                  re.M)
_SKIP = re.compile(r"<!-- docs-test: skip ([^>]*)-->\s*$")
_MAIN = 'if __name__ == "__main__":'
_REQUIRES = re.compile(r"<!-- docs-test: requires ([^>]*)-->")


def blocks(path):
    """[(language, code, skip reason or None)] of a page, in order."""
    text = open(path, encoding="utf-8").read()
    out = []
    if path.endswith(".rst"):
        for m in _RST.finditer(text):
            body = m.group("body")
            indent = min(len(line) - len(line.lstrip()) for line in body.splitlines() if line.strip())
            code = "\n".join(line[indent:] for line in body.splitlines()) + "\n"
            out.append((m.group("lang"), code, None))
        return out
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        skip = _SKIP.search(before[-1]) if before else None
        lang = m.group("lang").strip("{}")
        if lang == "code-block":  # MyST's ```{code-block} python
            lang = m.group(0).split("\n", 1)[0].split()[-1]
        out.append((lang, m.group("body"), skip.group(1).strip() if skip else None))
    return out


def _requires(path):
    m = _REQUIRES.search(open(path, encoding="utf-8").read())
    return m.group(1).split() if m else []


def _python_pages():
    return [p for p in PAGES if any(lang == "python" for lang, _, _ in blocks(p))]


@pytest.mark.parametrize("page", _python_pages(), ids=[os.path.relpath(p, ROOT) for p in _python_pages()])
def test_python_blocks_run_as_pasted(page, tmp_path):
    for mod in _requires(page):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{os.path.relpath(page, ROOT)} needs {mod}")
    code = [c for lang, c, skip in blocks(page) if lang == "python" and skip is None]
    if not code:
        pytest.skip("every block is marked skip")
    # a block with a __main__ guard is a whole script (its worker processes import it): run it alone
    scripts = ["\n".join(c for c in code if _MAIN not in c)] + [c for c in code if _MAIN in c]
    env = dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="Agg")
    if "gpu" in os.path.basename(page):
        env["NUMBA_ENABLE_CUDASIM"] = "1"  # the GPU page's blocks on Numba's simulator
    for i, text in enumerate(s for s in scripts if s.strip()):
        script = tmp_path / f"page{i}.py"
        script.write_text(text)
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"{os.path.relpath(page, ROOT)}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"


def _command_lines(code):
    """The shell lines of a block, continuation lines joined and comments dropped."""
    joined = code.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            yield from (part.strip() for part in line.split("&&"))


def _parse_cli(argv):
    from fastact.__main__ import build_parser
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code in (0, None)
    return True


@pytest.mark.parametrize("page", PAGES, ids=_ID)
def test_shell_commands_parse(page):
    bad = []
    for lang, code, skip in blocks(page):
        if lang not in ("bash", "sh", "console", "shell") or skip:
            continue
        for cmd in _command_lines(code):
            words = shlex.split(cmd)
            while words and (words[0] in ("mpiexec", "env") or "=" in words[0]):
                words = words[3:] if words[0] == "mpiexec" else words[1:]
            if words[:3] == ["python", "-m", "fastact"]:
                if not _parse_cli(words[3:]):
                    bad.append(cmd)
            elif words[:1] == ["python"] and len(words) > 1 and words[1].endswith(".py"):
                if not os.path.exists(os.path.join(ROOT, words[1])):
                    bad.append(f"{cmd} (no {words[1]})")
    assert not bad, f"commands in {os.path.relpath(page, ROOT)} that fastact refuses: {bad}"


_RESULT = re.compile(r"bench/results/[\w./-]*[\w]")


def _doc_texts():
    files = PAGES + sorted(glob.glob(os.path.join(ROOT, "docs", "examples", "*.py")))
    return {os.path.relpath(f, ROOT): open(f, encoding="utf-8").read() for f in files}


def test_every_cited_run_exists():
    missing = []
    for name, text in _doc_texts().items():
        for ref in _RESULT.findall(text):
            if not os.path.exists(os.path.join(ROOT, ref)):
                missing.append(f"{name}: {ref}")
    assert not missing, "figures citing runs that are not committed: " + ", ".join(missing)


def _png_text(path):
    from PIL import Image
    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or im.info)


@pytest.mark.parametrize("image", sorted(glob.glob(os.path.join(ROOT, "docs", "images", "*.png"))),
                         ids=os.path.basename)
def test_every_figure_names_its_source(image):
    from fastact import plots
    meta = _png_text(image)
    source = meta.get("Source")
    assert source, f"{os.path.basename(image)} has no Source metadata: redraw it with python -m fastact plot"
    results = meta.get("Results")
    if results:  # drawn from benchmark results: those files exist, and no newer complete run exists
        assert os.path.isdir(os.path.join(ROOT, results)), f"{image}: {results} is not committed"
        newest = os.path.relpath(plots.find_results(os.path.join(ROOT, "bench", "results")), ROOT)
        assert results == newest, f"{os.path.basename(image)} was drawn from {results}, the newest " \
            f"results are {newest}: python -m fastact plot --out docs/images --results bench/results"


def test_every_page_is_in_the_site():
    index = open(os.path.join(ROOT, "docs", "index.rst"), encoding="utf-8").read()
    for page in glob.glob(os.path.join(ROOT, "docs", "*.md")) + glob.glob(os.path.join(ROOT, "docs", "*.rst")):
        name = os.path.splitext(os.path.basename(page))[0]
        if name != "index":
            assert re.search(rf"^\s+{re.escape(name)}\s*$", index, re.M), f"docs/{name} is in no toctree"
