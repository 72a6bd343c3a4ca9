"""The ecosystem matrix: every peer fixture read by featcircuits, compared with what the peer
computed, written as the table in docs/ecosystem.md.

    python tools/ecosystem_matrix.py          # rewrite docs/ecosystem.md's table
    python tools/ecosystem_matrix.py --check  # exit 1 if the page is out of date

``check_fixture`` is also what tests/dictionaries/test_peer_fixtures.py runs, so the page and
the tests share one computation. No peer is needed: the fixtures hold the peers' outputs.
A fixture whose ``expected.json`` names a ``spec`` (Gemma Scope, Llama Scope) holds the
files at their paths inside the hub repo and is loaded by that spec, with the hub's download
function serving them from the fixture folder; the files asked for are recorded
(``Outcome.downloads``) for the test to compare with the ``downloads`` the peer asked for.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "peers"
PAGE = ROOT / "docs" / "ecosystem.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


@dataclass
class Outcome:
    """One fixture read by featcircuits (``refused`` set, or the errors and sites)."""

    peer: str
    version: str
    variant: str
    peer_class: str
    notes: str
    direction: str = "peer → featcircuits"
    refused: str | None = None
    features: float | None = None        # max |ours - peer| / max(1, max |peer|), features
    reconstruction: float | None = None  # ... over decode(features)
    output: float | None = None          # ... over a transcoder's output with skip
    sites: dict[str, str | None] | None = None  # site (and input site) read by featcircuits
    expected_sites: dict[str, str | None] | None = None
    hook_name: str | None = None         # meta["hook_name"] read by featcircuits
    downloads: list[list[str]] | None = None  # [repo, file] a spec fixture's load asked for
    spec: str | None = None              # the spec a hub fixture is loaded by

    @property
    def max_error(self) -> float:
        return max(v for v in (self.features, self.reconstruction, self.output) if v is not None)


def fixture_folders() -> list[Path]:
    """Every fixture folder (one per variant), sorted."""
    return sorted(p.parent for p in FIXTURES.glob("*/*/expected.json"))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max(1, max |b|)``: float32 error relative to the values' scale (a
    feature of 24 carries rounding of about 24 × 1.2e-7 per operation)."""
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != peer's {tuple(b.shape)}")
    if not a.numel():
        return 0.0
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@torch.no_grad()
def check_fixture(folder: Path) -> Outcome:
    """Load ``folder`` with featcircuits and compare with the peer's recorded outputs."""
    from featcircuits.dictionaries import load_dictionaries, load_dictionary
    from featcircuits.errors import DictionaryLoadError

    meta = json.loads((folder / "expected.json").read_text())
    expected = load_file(str(folder / "expected.safetensors"))
    outcome = Outcome(meta["peer"], meta["version"], meta["variant"], meta["class"],
                      meta.get("notes", ""), meta.get("direction", "peer → featcircuits"))
    if meta.get("kind") == "clt":
        return _check_cross_layer(folder, meta, expected, outcome)
    try:
        if meta.get("kind") == "set":
            loaded = load_dictionaries(folder)
        elif meta.get("spec"):
            outcome.downloads, outcome.spec = [], meta["spec"]
            loaded = {None: _load_spec(folder, meta["spec"], outcome.downloads)}
        else:
            loaded = {None: load_dictionary(folder)}
    except DictionaryLoadError as exc:  # the message without this checkout's path
        outcome.refused = exc.message.replace(str(folder), str(folder.relative_to(ROOT)))
        return outcome
    if meta.get("kind") == "set":
        outcome.expected_sites = dict(meta["sites"])
        outcome.sites = {site: d.input_site for site, d in loaded.items()}
        members = [(f".{i}", d) for i, d in enumerate(loaded.values())]
    else:
        dictionary = loaded[None]
        outcome.expected_sites = {"site": meta["site"], "input_site": meta["input_site"]}
        outcome.sites = {"site": dictionary.site,
                         "input_site": (dictionary.input_site
                                        if meta["input_site"] is not None else None)}
        outcome.hook_name = dictionary.meta.get("hook_name")
        members = [("", dictionary)]
    errors: dict[str, float] = {}
    for suffix, dictionary in members:
        x = expected["x" + suffix]
        features = dictionary.encode(x)
        pairs = [("features", features), ("reconstruction", dictionary.decode(features))]
        if "x_out" + suffix in expected:
            pairs.append(("x_out", dictionary.transcode(x)))
        for key, ours in pairs:
            errors[key] = max(errors.get(key, 0.0), _max_abs(ours, expected[key + suffix]))
    outcome.features = errors["features"]
    outcome.reconstruction = errors["reconstruction"]
    outcome.output = errors.get("x_out")
    return outcome


def _check_cross_layer(folder: Path, meta: dict, expected: dict[str, torch.Tensor],
                       outcome: Outcome) -> Outcome:
    """A cross-layer transcoder: ``load_dictionaries`` gives one dictionary per read layer;
    features per layer, and the reconstruction at every output site (circuit-tracer's
    ``forward``, ``x_out [layer, row, d]``: no skip in its files) summed over the layers."""
    from featcircuits.dictionaries import CrossLayerTranscoder, load_dictionaries
    from featcircuits.errors import DictionaryLoadError

    try:
        loaded = load_dictionaries(folder)
    except DictionaryLoadError as exc:
        outcome.refused = exc.message.replace(str(folder), str(folder.relative_to(ROOT)))
        return outcome
    outcome.expected_sites = dict(meta["sites"])
    outcome.sites = {site: d.input_site for site, d in loaded.items()}
    clt = CrossLayerTranscoder(list(loaded.values()))
    features = clt.encode(expected["x"])
    outcome.features = _max_abs(torch.stack(features), expected["features"])
    outcome.reconstruction = _max_abs(torch.stack(clt.reconstruct(features)),
                                      expected["x_out"])
    return outcome


def _load_spec(folder: Path, spec: str, asked: list[list[str]]):
    """``load_dictionary(spec)`` with the hub's download function serving the files from
    ``folder`` (stored there at their paths inside the repo); ``asked`` collects the
    ``[repo, file]`` pairs requested, to compare with what the peer's loader asked for."""
    import shutil
    import tempfile
    from unittest import mock

    from featcircuits.dictionaries import hub, load_dictionary

    def download(repo_id: str, filename: str, local_dir: str, **_) -> str:
        asked.append([repo_id, filename])
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / filename, target)
        return str(target)

    from featcircuits.errors import DictionaryLoadError

    with tempfile.TemporaryDirectory() as cache, \
            mock.patch.object(hub, "_hf_hub_download", download):
        try:
            return load_dictionary(spec, cache_dir=cache, progress=False)
        except DictionaryLoadError as exc:  # the message without the temporary folder
            exc.message = exc.message.replace(str(Path(cache).resolve()), "<cache>").replace(
                cache, "<cache>")
            raise


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def render(outcomes: list[Outcome]) -> str:
    """The markdown table (between the page's markers)."""
    lines = [("| peer | variant (peer class) | direction | features | reconstruction | "
             "output (+skip) | result |"),
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        name = f"`{o.variant}` ({o.peer_class})"
        peer = f"{o.peer} {o.version}"
        if o.refused is not None:
            reason = o.refused.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {peer} | {name} | {o.direction} | — | — | — | "
                         f"refused: {reason} |")
            continue
        verdict = "exact (≤ 1e-5)" if o.max_error <= 1e-5 else f"ERROR {o.max_error:.2g}"
        if o.sites != o.expected_sites:
            verdict += f"; sites {o.sites} expected {o.expected_sites}"
        if o.downloads is not None:
            verdict += f" (via `{o.spec}`, the peer's files)"
        lines.append(f"| {peer} | {name} | {o.direction} | {_cell(o.features)} | "
                     f"{_cell(o.reconstruction)} | {_cell(o.output)} | {verdict} |")
    return "\n".join(lines)


_NUMBER = re.compile(r"\d\.\de[+-]\d\d")


def bucketed(text: str) -> str:
    """``text`` with every error value replaced by ``≤1e-5`` or ``>1e-5``: the page shows
    the values measured where it was generated, and compares equal on any machine whose
    float rounding differs but whose verdicts agree."""
    return _NUMBER.sub(lambda m: "≤1e-5" if float(m.group()) <= 1e-5 else ">1e-5", text)


def page_with_table(text: str, table: str) -> str:
    """``text`` with the block between the markers replaced by ``table``."""
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 if stale")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = render([check_fixture(folder) for folder in fixture_folders()])
    text = PAGE.read_text(encoding="utf-8")
    new = page_with_table(text, table)
    if args.check:
        if bucketed(new) != bucketed(text):
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python tools/ecosystem_matrix.py")
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
