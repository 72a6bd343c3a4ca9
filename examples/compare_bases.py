"""Fit PCA and ICA on the bundled model's residual stream and compare every basis.

For each layer: collect residual activations from the bundled corpus, fit PCA and ICA
(featcircuits' torch FastICA), save them beside the shipped SAEs, and print per basis the
variance explained by its 16 strongest features, the mean excess kurtosis of feature
activations (heavy tails = sparse, interpretable-looking features), the token purity of each
feature's top activations, and L0.

    python examples/compare_bases.py                   # prints the table, saves to out/bases
    python examples/compare_bases.py --save-to-zoo     # also writes ica/ into the zoo
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd


def main(argv: list[str] | None = None) -> int:
    import featcircuits as fc
    from featcircuits.experiments import dictionary_sets
    from featcircuits.patching.compare import basis_statistics, reference_bases
    from featcircuits.tasks.corpus import corpus_documents
    from featcircuits.train.buffer import bos_token_id, collect_activations, keep_mask, tokenize
    from featcircuits.train.ica import fit_ica

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--texts", type=int, default=600, help="corpus documents (default 600)")
    parser.add_argument("--max-tokens", type=int, default=15_000)
    parser.add_argument("--k", type=int, default=16, help="features for variance explained")
    parser.add_argument("--out", default="out/bases", help="where fitted bases are saved")
    parser.add_argument("--save-to-zoo", action="store_true",
                        help="also save the ICA bases into the model's dictionaries folder "
                        "(the zoo's PCA bases come from the shipping script)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    model = fc.load_model(args.model)
    sites = [str(site) for site in fc.model.all_sites(model)]
    texts = corpus_documents(args.texts, seed=args.seed + 555)
    activations = collect_activations(model, sites, texts, args.max_tokens, progress=not args.quiet)
    input_ids, attention_mask = tokenize(model, texts, 64)
    keep = keep_mask(input_ids, attention_mask, bos_token_id(model), drop_bos=True)
    token_ids = input_ids[keep][: args.max_tokens]
    zoo = fc.zoo_path(args.model) / "dictionaries" if args.model in fc.model.zoo_names() else None
    shipped = dictionary_sets(zoo, model) if zoo and zoo.is_dir() else {}
    shipped = {name: sets for name, sets in shipped.items() if name not in ("pca", "ica")}
    rows = []
    for site in sites:
        x = activations[site]
        bases = {name: sets[site] for name, sets in shipped.items() if site in sets}
        bases["pca"] = fc.dictionaries.PCABasis.fit(x, site=site)
        bases["ica"] = fit_ica(x, x.shape[1], seed=args.seed, site=site, tol=1e-3, max_iter=400,
                               progress=False, small_ops_threads=1)
        bases.update({name: sets[site] for name, sets in reference_bases(model, [site]).items()})
        for name in ("pca", "ica"):
            fc.save_dictionary(bases[name], f"{args.out}/{name}/{site}")
            if args.save_to_zoo and zoo is not None and name == "ica":
                fc.save_dictionary(bases[name], zoo / name / site)
        for name, basis in bases.items():
            rows.append({"site": site, "basis": name,
                         **basis_statistics(basis, x, token_ids, k=args.k)})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 120, "display.max_rows", 200):
        print(table.to_string(index=False, float_format="%.3f"))
    print(f"\nsaved PCA and ICA bases under {args.out}"
          + (f" and {zoo}" if args.save_to_zoo and zoo is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
