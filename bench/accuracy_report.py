"""Worst error in ulps of every activation against 60-digit mpmath, float32 and float64, forward and
backward, over dense grids: every kink approached from both sides, both tails out to the largest
finite value, +-inf, and zero through the subnormals; and the tables of the derivative at every kink
and the limits at +-inf, generated from the activation table. Writes them into ``docs/accuracy.md``.

    python bench/accuracy_report.py            # prints the markdown tables
    python bench/accuracy_report.py --write    # also rewrites them in docs/accuracy.md

The references are in ``tests/mpref.py`` (mpmath, a test-only dependency); the tests enforce the
bounds the activation table states (``max_ulp``), which were set from this report's figures.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import fastact as fa  # noqa: E402
from fastact.table import ENTRIES  # noqa: E402

import mpref  # noqa: E402
from conftest import PARAM_SETS, default_kwargs  # noqa: E402

SECTIONS = {
    "kinks": ("<!-- kink table: begin -->", "<!-- kink table: end -->"),
    "limits": ("<!-- limit table: begin -->", "<!-- limit table: end -->"),
    "ulps": ("<!-- accuracy table: begin -->", "<!-- accuracy table: end -->"),
}


def cases():
    for name, act in ENTRIES.items():
        for kwargs in [default_kwargs(act)] + PARAM_SETS.get(name, []):
            yield name, act, kwargs


def _kw(kwargs, act):
    diff = {k: v for k, v in kwargs.items() if v != default_kwargs(act)[k]}
    return ", ".join(f"{k}={v!r}" for k, v in diff.items()) or "defaults"


def _g(v):
    return f"{v:.6g}" if np.isfinite(v) else ("inf" if v > 0 else "-inf")


def ulp_table():
    lines = ["| activation | parameters | float32 forward | float32 backward | float64 forward "
             "| float64 backward |", "|---|---|---|---|---|---|"]
    for name, act, kwargs in cases():
        f, fb = getattr(fa, name), getattr(fa, name + "_backward")
        cells = []
        for dt in (np.float32, np.float64):
            r = mpref.scan(act, kwargs, dt, f, fb)
            cells += [r["forward"], r["backward"]]
        txt = [f"{u:.2g} (x = {x:.4g})" if u > 0 else "0" for u, x in cells]
        lines.append(f"| `{name}` | {_kw(kwargs, act)} | " + " | ".join(txt) + " |")
    return "\n".join(lines)


def kink_table():
    """Every kink with the derivative just left of it, at it (fastact's value, which the tests check
    against PyTorch 2.13's autograd) and just right of it, in float64, from the kernels themselves."""
    lines = ["| activation | parameters | kink x | f' just left | f'(x), fastact = PyTorch | f' just right |",
             "|---|---|---|---|---|---|"]
    for name, act, kwargs in cases():
        fb = getattr(fa, name + "_backward")
        params = [p.to_float(kwargs[p.name]) for p in act.params]
        for k in act.kinks(*params):
            if not np.isfinite(k):
                continue
            x = np.array([k - 1e-9 * max(1.0, abs(k)), k, k + 1e-9 * max(1.0, abs(k))])
            d = fb(np.ones(3), x, **kwargs)
            lines.append(f"| `{name}` | {_kw(kwargs, act)} | {_g(k)} | " + " | ".join(map(_g, d)) + " |")
    return "\n".join(lines)


def limit_table():
    lines = ["| activation | parameters | f(-inf) | f(+inf) | f'(-inf) | f'(+inf) |", "|---|---|---|---|---|---|"]
    for name, act, kwargs in cases():
        params = [p.to_float(kwargs[p.name]) for p in act.params]
        (fl, fh), (dl, dh) = act.limits(*params)
        lines.append(f"| `{name}` | {_kw(kwargs, act)} | " + " | ".join(map(_g, (fl, fh, dl, dh))) + " |")
    return "\n".join(lines)


def generated_sections(include_ulps=True):
    """[(begin marker, end marker, markdown)] for docs/accuracy.md."""
    out = [(*SECTIONS["kinks"], kink_table()), (*SECTIONS["limits"], limit_table())]
    if include_ulps:
        out.append((*SECTIONS["ulps"], ulp_table()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the tables in docs/accuracy.md")
    args = ap.parse_args(argv)
    sections = generated_sections()
    for _, _, text in sections:
        print(text, end="\n\n")
    if args.write:
        path = os.path.join(HERE, "..", "docs", "accuracy.md")
        doc = open(path).read()
        for begin, end, text in sections:
            i, j = doc.index(begin) + len(begin), doc.index(end)
            doc = doc[:i] + "\n" + text + "\n" + doc[j:]
        with open(path + ".tmp", "w") as fh:  # atomically: a reader never sees half a file
            fh.write(doc)
        os.replace(path + ".tmp", path)

if __name__ == "__main__":
    main()
