"""Patching speed, measured side by side in one run (not a test: prints ratios).

    python benchmarks/patching.py [--model tiny] [--sets 256] [--repeats 20]

1. a plain forward pass of the corrupted prompts (the floor);
2. one patched forward through featcircuits (`PatchingExperiment.patched_logits`, one set);
3. the same patch with raw torch forward hooks on the plain module (the reference);
4. 256 feature sets: one batched evaluation vs a loop of per-set evaluations, for two
   families of sets: the leave-one-out sets of a backward-elimination sweep (what the search
   evaluates: all active features but one) and sets of random size and membership.

Targets: (2) ≤ 1.3 × (3); batched ≥ 10 × faster than the per-set loop.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def _timed(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import featcircuits as fc
    from featcircuits.engine.settings import RunSettings
    from featcircuits.experiments.inputs import load_ioi_prompts
    from featcircuits.model.loading import underlying_module
    from featcircuits.model.sites import architecture

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--set", default="sae-sparse", help="dictionary set of the zoo model")
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--sets", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = fc.load_model(args.model)
    site = f"resid_out.{args.layer}"
    dictionary = fc.load_dictionary(fc.zoo_path(args.model) / "dictionaries" / args.set / site)
    prompts = load_ioi_prompts(None, "abc", args.n_prompts, seed=0)
    experiment = fc.PatchingExperiment(model, dictionary, prompts,
                                       settings=RunSettings(progress=False))
    active = experiment.active_features()
    feature_set = active[: max(1, len(active) // 2)]
    plain = underlying_module(model)
    corrupt_ids = experiment.prompts.corrupt_ids
    final = experiment.prompts.final_positions

    @torch.no_grad()
    def plain_forward():
        plain(corrupt_ids)

    def featcircuits_patch():
        experiment.patched_logits([feature_set])

    mask = torch.zeros(dictionary.n_features)
    mask[feature_set] = 1
    clean = experiment.clean_features[site]
    positions = experiment.position_mask[..., None]
    block = plain.get_submodule(f"{architecture(model).layers}.{args.layer}")

    def hook(module, inputs, output):
        corrupt = dictionary.encode(output)
        return output + ((clean - corrupt) * mask * positions) @ dictionary.directions

    @torch.no_grad()
    def raw_hook_patch():
        handle = block.register_forward_hook(hook)
        try:
            logits = plain(corrupt_ids).logits
        finally:
            handle.remove()
        return logits[torch.arange(len(final)), final]

    # the two patches agree before we time them
    ours, _ = experiment.patched_logits([feature_set])
    assert (ours[0] - raw_hook_patch()).abs().max() < 1e-4

    generator = torch.Generator().manual_seed(0)
    random_sets = [[active[i] for i in torch.randperm(len(active), generator=generator)[
        : int(torch.randint(1, len(active) + 1, (1,), generator=generator))].tolist()]
        for _ in range(args.sets)]
    leave_one_out = [[feature for feature in active if feature != left_out]
                     for left_out in (active * (args.sets // len(active) + 1))[: args.sets]]

    def batched(sets):
        return lambda: experiment.patched_logits(sets)

    def per_set(sets):
        def loop():
            for feature_ids in sets:
                experiment.patched_logits([feature_ids])
        return loop

    t_plain = _timed(plain_forward, args.repeats)
    t_ours = _timed(featcircuits_patch, args.repeats)
    t_hook = _timed(raw_hook_patch, args.repeats)
    family_times = {name: (_timed(batched(sets), max(1, args.repeats // 10)),
                           _timed(per_set(sets), 1))
                    for name, sets in (("elimination (leave-one-out)", leave_one_out),
                                       ("random sets", random_sets))}
    print(f"model {args.model}, site {site}, {dictionary!r}, {len(prompts)} prompts, "
          f"{len(feature_set)} features patched, {args.threads} threads")
    print(f"plain forward                 {t_plain * 1e3:8.2f} ms")
    print(f"featcircuits patched forward  {t_ours * 1e3:8.2f} ms")
    print(f"raw torch-hook patch          {t_hook * 1e3:8.2f} ms")
    print(f"  ratio featcircuits / hooks  {t_ours / t_hook:8.2f}   (target <= 1.3)")
    for name, (t_batched, t_loop) in family_times.items():
        print(f"{args.sets} sets, {name}:")
        print(f"  batched                     {t_batched * 1e3:8.1f} ms")
        print(f"  one by one                  {t_loop * 1e3:8.1f} ms")
        print(f"  speed-up batched vs loop    {t_loop / t_batched:8.1f}x  (target >= 10)")


if __name__ == "__main__":
    main()
