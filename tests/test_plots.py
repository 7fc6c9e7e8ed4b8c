"""The documentation figures regenerate (python -m fastact plot), and the ReLU demo really fits."""

import os

import numpy as np
import pytest

from fastact import plots
from fastact.__main__ import main

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"
#: the benchmark results of this checkout (bench/results/<date>/)
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results")


def test_every_figure_regenerates(tmp_path):
    paths = plots.all_figures(str(tmp_path), quick=True, results=RESULTS)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == sorted(["activations.png", "gelu_vs_relu.png", "relu_fit_cubic.png",
                            "relu_fit_cos.png", "relu_fit.gif", "speedup.png", "conv_gflops.png"])
    for p in paths:
        with open(p, "rb") as fh:
            head = fh.read(8)
        assert head == PNG or head[:6] in (b"GIF89a", b"GIF87a"), p
        assert os.path.getsize(p) > 5000, p


def test_relu_network_fits_the_cubic_and_its_pieces_sum_to_the_fit():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-1, 1, 200))
    y = x ** 3
    model, _ = plots._fit(x, y, epochs=1500)
    pieces, bias, alive = plots._pieces(model, x)
    fit = model(x[:, None])[:, 0]
    np.testing.assert_allclose(pieces.sum(axis=0) + bias, fit, rtol=1e-10, atol=1e-12)
    assert np.mean((fit - y) ** 2) < 2e-3          # a straight line would leave ~0.03
    assert alive.sum() >= 5


def test_results_are_found_from_a_date_directory_or_its_parent(tmp_path, monkeypatch):
    newest = plots.find_results(RESULTS)
    assert os.path.dirname(newest) == RESULTS
    assert plots.find_results(newest) == newest
    monkeypatch.chdir(os.path.dirname(os.path.dirname(RESULTS)))  # the checkout root
    assert os.path.samefile(plots.find_results(), newest)
    monkeypatch.chdir(tmp_path)  # elsewhere, as from an installed wheel: a clear error
    with pytest.raises(FileNotFoundError, match="--results DIR"):
        plots.find_results()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="activations.md and conv.txt"):
        plots.find_results(str(tmp_path / "empty"))


def test_plot_without_results_makes_the_other_figures_and_says_so(tmp_path, monkeypatch, capsys):
    """Without benchmark results `plot` draws what it can, where --out says (by default
    ./fastact-figures, never a path of the source tree), says what it left out, and exits 0; results
    asked for with --results and not found are an error."""
    made = []
    monkeypatch.setattr(plots, "gallery", lambda out: made.append(out) or [f"{out}/activations.png"])
    monkeypatch.setattr(plots, "relu_fit", lambda out, **kw: made.append(out) or [f"{out}/relu_fit.gif"])
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "--out", str(tmp_path / "img"), "--quick"]) == 0
    out, err = capsys.readouterr()
    assert made == [str(tmp_path / "img")] * 2 and "relu_fit.gif" in out
    assert "no benchmark results" in err and "speedup.png" in err
    assert main(["plot", "--quick"]) == 0 and made[-1] == "fastact-figures"
    assert not (tmp_path / "docs").exists()
    capsys.readouterr()
    assert main(["plot", "--quick", "--results", str(tmp_path / "nowhere")]) == 2
    assert "no benchmark results" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        plots.all_figures(str(tmp_path / "img"), results=str(tmp_path))


def test_performance_tables_are_parsed():
    root = plots.find_results(RESULTS)
    ratios = plots._read_ratio_tables(os.path.join(root, "activations.md"))
    assert ("gelu", "1e7") in ratios and ratios[("gelu", "1e7")][0] > 1
    rows, sgemm = plots._read_conv_table(os.path.join(root, "conv.txt"))
    assert len(rows) >= 16 and sgemm


def test_figures_are_the_same_bytes_for_the_same_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = plots.gallery(str(tmp_path / "a")) + plots.relu_fit(str(tmp_path / "a"), epochs=50, frames=2)
    b = plots.gallery(str(tmp_path / "b")) + plots.relu_fit(str(tmp_path / "b"), epochs=50, frames=2)
    assert [os.path.basename(p) for p in a] == [os.path.basename(p) for p in b]
    for p, q in zip(a, b):
        with open(p, "rb") as fa, open(q, "rb") as fb:
            assert fa.read() == fb.read(), os.path.basename(p)
