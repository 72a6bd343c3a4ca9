"""Feature dashboard of one feature of a shipped SAE on the bundled model.

By default: the feature of ``sae-sparse`` at ``resid_out.2`` whose decoder direction most
raises the logit of ")" (direct logit effect) — a candidate closing-parenthesis feature.

    python examples/feature_dashboard.py --out out/dashboard     # writes .png and .html
    python examples/feature_dashboard.py --site resid_out.3 --feature 117

docs/img/dashboard_example.png comes from ``--dpi 100``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import featcircuits as fc
from featcircuits.dashboards import (
    default_texts,
    direct_logit_effect,
    feature_dashboard_data,
    render_dashboard,
    write_dashboard,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/dashboard", help="output folder")
    parser.add_argument("--set", default="sae-sparse", help="dictionary set of the zoo model")
    parser.add_argument("--site", default="resid_out.2")
    parser.add_argument("--feature", type=int, default=None,
                        help="feature id (default: the one that most raises ')')")
    parser.add_argument("--n-texts", type=int, default=200)
    parser.add_argument("--dpi", type=float, default=150.0)
    args = parser.parse_args(argv)

    model = fc.load_model("tiny")
    dictionary = fc.load_dictionary(fc.zoo_path("tiny") / "dictionaries" / args.set / args.site)
    feature = args.feature
    if feature is None:
        close = model.tokenizer(")", add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            effects = torch.stack([direct_logit_effect(model, direction)[close]
                                   for direction in dictionary.directions])
        feature = int(effects.argmax())
    data = feature_dashboard_data(model, dictionary, args.site, feature,
                                  texts=default_texts(args.n_texts))
    out = Path(args.out)
    render_dashboard(data, out / f"{args.site}_{feature}.png", dpi=args.dpi)
    write_dashboard(data, out / f"{args.site}_{feature}.html")
    print(f"feature {feature} at {args.site}: fires on {data.density:.1%} of tokens; "
          f"wrote {out}/{args.site}_{feature}.png and .html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
