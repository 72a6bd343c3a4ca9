"""featcircuits leaves matplotlib's process-wide state alone: importing it and rendering a
circuit (diagram, HTML) and patching curves neither switches the backend nor registers
figures with pyplot. Runs in a fresh interpreter, so the import itself is checked too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")  # a non-Agg backend the user chose: featcircuits must keep it
import matplotlib.pyplot as plt  # pyplot only here, in the test

plt.figure()  # one figure of the user's own
before = (matplotlib.get_backend(), plt.get_fignums())

import pandas as pd

import featcircuits
from featcircuits.render import example_circuit, plot_patching_curves, render_circuit, to_html
from featcircuits.render.diagram import save_figure

out = Path(sys.argv[1])
graph = example_circuit()
figure = render_circuit(graph)
save_figure(figure, out / "circuit.png")
save_figure(figure, out / "circuit.svg")
to_html(graph, out / "circuit.html")
results = pd.DataFrame(
    [
        {"site": site, "basis": basis, "kl": kl, "n_features": n, "edit_magnitude": 0.5 * n}
        for site in ("resid_out.0", "resid_out.1")
        for basis in ("sae-sparse", "pca")
        for n, kl in ((0, 1.0), (1, 0.5), (4, 0.1), (8, 0.0))
    ]
)
curves = plot_patching_curves(results, path=out / "curves.png")
plot_patching_curves(results, path=out / "curves.svg")
after = (matplotlib.get_backend(), plt.get_fignums())
assert before == after, (before, after)
assert "featcircuits" in sys.modules and featcircuits
assert curves.canvas.get_default_filetype() == "png"  # its own canvas, usable without pyplot
print("ok", after)
"""


@pytest.mark.slow
def test_rendering_leaves_backend_and_pyplot_figures_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MPLBACKEND", None)
    done = subprocess.run(  # noqa: PLW1510 (the return code is asserted below)
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "ok ('svg', [1])"
    for name in ("circuit.png", "circuit.svg", "circuit.html", "curves.png", "curves.svg"):
        assert (tmp_path / name).stat().st_size > 0, name
