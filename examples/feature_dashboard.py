"""Feature dashboard of one feature of a stand-in SAE on the bundled model.

The bundled model ships no trained SAEs yet, so this builds a small ReLU SAE by hand: the
first 16 principal components of ``resid_out.2`` as encoder and decoder, each with an encoder
bias that lets it fire on the top ~15% of tokens. Its feature 3 responds to '('.

    python examples/feature_dashboard.py --out out/dashboard     # writes .png and .html

docs/img/dashboard_example.png comes from ``--dpi 100``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from featcircuits.dashboard import (
    default_texts,
    feature_dashboard_data,
    render_dashboard,
    write_dashboard,
)
from featcircuits.dictionaries import PCABasis, SparseAutoencoder
from featcircuits.models import load_model, underlying_module

SITE, LAYER = "resid_out.2", 2


def stand_in_sae(model, texts: list[str], n_features: int = 16, quantile: float = 0.85):
    """A ReLU SAE whose directions are principal components of the site's activations."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor(model.tokenizer(text)["input_ids"][:64])
            out = underlying_module(model)(ids[None], output_hidden_states=True)
            rows.append(out.hidden_states[LAYER + 1][0, 1:])  # skip the BOS token
    acts = torch.cat(rows)
    pca = PCABasis.fit(acts, n_features)
    sae = SparseAutoencoder(acts.shape[1], n_features, site=SITE)
    with torch.no_grad():
        sae.W_enc.copy_(pca.directions.T)
        sae.W_dec_untied.copy_(pca.directions)
        sae.b_dec.copy_(pca.decoder_bias)
        pre = (acts - pca.decoder_bias) @ pca.directions.T
        sae.b_enc.copy_(-pre.quantile(quantile, dim=0))
    return sae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/dashboard", help="output folder")
    parser.add_argument("--feature", type=int, default=3)
    parser.add_argument("--n-texts", type=int, default=200)
    parser.add_argument("--dpi", type=float, default=150.0)
    args = parser.parse_args(argv)
    model = load_model("tiny")
    texts = default_texts(args.n_texts, seed=0)
    sae = stand_in_sae(model, texts)
    data = feature_dashboard_data(model, sae, SITE, args.feature, texts=texts)
    out = Path(args.out)
    render_dashboard(data, out / f"feature{args.feature}.png", dpi=args.dpi)
    write_dashboard(data, out / f"feature{args.feature}.html")
    print(f"feature {args.feature}: fires on {len(data.fire_activations)} of "
          f"{data.n_counted_tokens} tokens; top tokens "
          f"{list(data.histogram_counts)[:3]}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
