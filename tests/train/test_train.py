"""Training: activation buffer, SAE trainer (sparsity, constraints, resampling, resume),
in-model evaluation and the shipping pipeline."""

from __future__ import annotations

import json
import random

import pytest
import torch

from featcircuits import NonFiniteError, SiteError, TrainingError, load_dictionary, load_model
from featcircuits.dictionaries import NeuronBasis, PCABasis, SparseAutoencoder
from featcircuits.model.loading import underlying_module
from featcircuits.train.buffer import ActivationBuffer, StepBatches, collect_activations
from featcircuits.train.evaluate import evaluate_dictionary
from featcircuits.train.sae import SAETrainer, train_sae
from featcircuits.train.shipping import (
    SAESetSpec,
    ShippingConfig,
    next_l1_coefficient,
    ship_dictionaries,
)

BOS = "<|endoftext|>"
BOS_ID = 62


def _texts(n: int, seed: int = 0, bos_every: int = 3) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = " ".join(f"w{rng.randrange(62)}" for _ in range(rng.randint(2, 30)))
        texts.append(f"{BOS} {words}" if i % bos_every == 0 else words)
    return texts


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt_neox"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread avoids thread-pool overhead on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _expected_count(model, texts, drop_bos=True):
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt")
    mask = encoded["attention_mask"].bool()
    count = int(mask.sum())
    if drop_bos:
        first = mask.int().argmax(1)
        count -= int((encoded["input_ids"][torch.arange(len(texts)), first] == BOS_ID).sum())
    return count


# ------------------------------------------------------------------------------- buffer
def test_buffer_shapes_and_token_counts(model):
    texts = _texts(40)
    buffer = ActivationBuffer(model, "resid_out.1", texts, batch_size=8, buffer_size=128,
                              out_batch_size=32)
    batches = list(buffer)
    sizes = [b.shape[0] for b in batches]
    assert all(b.shape[1] == 32 and b.dtype == torch.float32 for b in batches)
    assert all(s == 32 for s in sizes[:-1]) and 0 < sizes[-1] <= 32
    expected = _expected_count(model, texts, drop_bos=True)
    assert sum(sizes) == expected == buffer.tokens_seen
    # BOS kept: exactly one more activation per BOS-prefixed text (every third text)
    kept = ActivationBuffer(model, "resid_out.1", texts, batch_size=8, buffer_size=128,
                            out_batch_size=32, drop_bos=False)
    assert sum(b.shape[0] for b in kept) == expected + len(range(0, 40, 3))
    assert buffer.forwards == 5  # 40 texts / 8 per forward


def test_buffer_values_match_plain_forward_without_padding(model):
    texts = ["w5 w9 w1 w33", f"{BOS} w2 w7", "w40 w41 w42 w43 w44 w45 w46"]
    buffer = ActivationBuffer(model, "resid_out.0", texts, batch_size=3, buffer_size=64,
                              out_batch_size=64, shuffle=False)
    got = torch.cat(list(buffer))
    hf = underlying_module(model)
    expected = []
    for text in texts:
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = hf(ids, output_hidden_states=True).hidden_states[1][0]  # after block 0
        expected.append(hidden[1:] if ids[0, 0] == BOS_ID else hidden)
    expected = torch.cat(expected)
    assert got.shape == expected.shape == (4 + 2 + 7, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _sorted_rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    """The rows of ``x [n, d]`` as exact tuples, sorted lexicographically (a multiset)."""
    return sorted(tuple(row) for row in x.tolist())


def test_buffer_is_deterministic_by_seed_and_refills(model):
    texts = _texts(48, seed=1)

    def run(seed):
        buffer = ActivationBuffer(model, "resid_out.0", texts, batch_size=4, buffer_size=64,
                                  out_batch_size=16, seed=seed)
        first = next(buffer)
        seen_after_first = buffer.tokens_seen
        return [first, *buffer], seen_after_first, buffer

    a, seen_a, buffer_a = run(0)
    b, _, _ = run(0)
    c, _, _ = run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    flat_a, flat_c = torch.cat(a), torch.cat(c)
    assert not torch.equal(flat_a, flat_c)  # different shuffle ...
    # ... of the same rows: compare them as multisets (sorted over every column, so rows
    # that tie in one column cannot come out in a platform-dependent order)
    assert _sorted_rows(flat_a) == _sorted_rows(flat_c)
    # refills: the first batch needed only ~buffer_size tokens, not the whole corpus
    total = _expected_count(model, texts)
    assert 64 <= seen_a < 64 + 4 * 31 < total
    assert buffer_a.tokens_seen == total and buffer_a.forwards == 12


def test_buffer_errors(model, checkpoint_dirs):
    with pytest.raises(TrainingError, match="text iterator was empty"):
        next(ActivationBuffer(model, "resid_out.0", []))
    with pytest.raises(SiteError, match="out of range"):
        ActivationBuffer(model, "resid_out.7", ["w1 w2"])
    with pytest.raises(SiteError):
        ActivationBuffer(model, "module:gpt_neox.nope", ["w1 w2"])
    broken = load_model(checkpoint_dirs["gpt_neox"])
    with torch.no_grad():
        underlying_module(broken).gpt_neox.embed_in.weight[7] = float("nan")
    texts = ["w1 w2 w3"] * 5 + ["w1 w7 w2"]
    buffer = ActivationBuffer(broken, "resid_out.1", texts, batch_size=2, buffer_size=8,
                              out_batch_size=4)
    with pytest.raises(NonFiniteError, match=r"resid_out\.1 in text batch 2"):
        list(buffer)


def test_collect_activations_single_and_multi(model):
    texts = _texts(30, seed=2)
    single = collect_activations(model, "resid_out.1", texts, 100, progress=False)
    assert single.shape == (100, 32)
    both = collect_activations(model, ["resid_out.1", "resid_out.0"], texts, 10_000,
                               progress=False)
    assert list(both) == ["resid_out.0", "resid_out.1"]
    assert both["resid_out.0"].shape == (_expected_count(model, texts), 32)
    torch.testing.assert_close(both["resid_out.1"][:100], single)
    with pytest.raises(TrainingError, match="empty"):
        collect_activations(model, "resid_out.0", [], 10, progress=False)


# ------------------------------------------------------------------------------ trainer
def _sparse_data(n=20_000, d=16, m=32, p=0.08, seed=0):
    """Sparse non-negative codes over ``m`` random unit directions, plus an offset."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(m, d, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, m, generator=generator) < p) * (
        torch.rand(n, m, generator=generator) * 2 + 0.5)
    return codes @ directions + 0.3, directions


@torch.no_grad()
def _variance_explained(sae, x):
    return float(1 - (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_trainer_learns_the_true_sparse_dictionary():
    x, directions = _sparse_data()
    sae, log = train_sae(StepBatches(x, 128), 16, 64, l1_coefficient=0.5, lr=3e-3, steps=1200,
                         progress=False, log_every=200, site="resid_out.0")
    assert list(log["step"]) == [200, 400, 600, 800, 1000, 1200]
    assert log["loss"].iloc[-1] < 0.7 * log["loss"].iloc[0]
    held_out = x[-2000:]
    assert _variance_explained(sae, held_out) > 0.85
    assert log["variance_explained"].iloc[-1] > 0.85
    l0 = float((sae.encode(held_out) > 0).sum(-1).float().mean())
    assert 2 < l0 < 20 and abs(log["l0"].iloc[-1] - l0) < 3
    # unit-norm decoder rows; most true directions found by some feature
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5, rtol=0)
    best_cosine = (sae.W_dec @ directions.T).max(0).values
    assert (best_cosine > 0.9).float().mean() >= 0.75
    assert sae.site == "resid_out.0" and sae.meta["training_steps"] == 1200


def test_stronger_l1_gives_sparser_codes():
    x, _ = _sparse_data(n=8000)
    l0 = []
    for l1 in (0.2, 2.0):
        sae, _ = train_sae(StepBatches(x, 128), 16, 32, l1_coefficient=l1, lr=3e-3, steps=400,
                           progress=False)
        l0.append(float((sae.encode(x[:2000]) > 0).sum(-1).float().mean()))
    assert l0[1] < 0.6 * l0[0]


def test_raw_units_after_folding_the_scale():
    """The trainer normalises activations internally; the returned SAE works on raw ones."""
    x, _ = _sparse_data(n=8000)
    big = 50 * x
    sae, _ = train_sae(StepBatches(big, 128), 16, 64, l1_coefficient=0.5, lr=3e-3, steps=600,
                       progress=False)
    assert sae.meta["activation_scale"] == pytest.approx(1 / 50, rel=0.5)
    assert _variance_explained(sae, big[-2000:]) > 0.8


def test_tied_and_topk():
    x, _ = _sparse_data(n=8000)
    tied, _ = train_sae(StepBatches(x, 128), 16, 64, l1_coefficient=0.5, tied=True, lr=3e-3,
                        steps=800, progress=False)
    assert tied.tied and tied.W_dec_untied is None
    assert torch.equal(tied.W_dec, tied.W_enc.T)
    torch.testing.assert_close(tied.W_dec.norm(dim=1), torch.ones(64), atol=1e-5, rtol=0)
    assert _variance_explained(tied, x[-2000:]) > 0.8

    topk, log = train_sae(StepBatches(x, 128), 16, 64, activation="topk", k=3, lr=3e-3,
                          steps=800, progress=False)
    active = (topk.encode(x[-2000:]) > 0).sum(-1)
    assert int(active.max()) == 3 and float(active.float().mean()) > 2.9
    assert log["l0"].iloc[-1] == pytest.approx(3, abs=0.1)
    assert topk.meta["l1_coefficient"] == 0.0
    assert _variance_explained(topk, x[-2000:]) > 0.8


def test_resampling_revives_killed_features():
    x, _ = _sparse_data(n=8000)
    fired = {}
    for every in (None, 200):
        trainer = SAETrainer(16, 64, l1_coefficient=0.5, lr=3e-3, steps=800,
                             resample_dead_every=every, dead_window=100)
        with torch.no_grad():
            trainer.sae.b_enc[:16] = -100.0  # these 16 features can never fire
        sae, log = trainer.fit(StepBatches(x, 128), progress=False, log_every=200)
        fired[every] = float((sae.encode(x[:4000]) > 0).any(0)[:16].float().mean())
        if every is None:
            assert log["resampled"].iloc[-1] == 0
            assert log["dead_fraction"].iloc[-1] >= 16 / 64
        else:
            assert log["resampled"].iloc[0] >= 16
    assert fired[None] == 0.0
    assert fired[200] >= 0.5


class _Killed(Exception):
    pass


def _killing(data, at_step):
    def batches(step):
        if step == at_step:
            raise _Killed
        return data(step)
    return batches


def _assert_same_sae(a: SparseAutoencoder, b: SparseAutoencoder):
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path):
    x, _ = _sparse_data(n=6000, d=8, m=16, p=0.15)
    data = StepBatches(x, 64, seed=3)
    settings = {"l1_coefficient": 0.5, "lr": 3e-3, "steps": 2000, "resample_dead_every": 300,
                    "dead_window": 100, "site": "resid_out.2"}

    def trainer():
        t = SAETrainer(8, 32, **settings)
        with torch.no_grad():
            t.sae.b_enc[:4] = -100.0  # force resampling so its RNG state matters
        return t

    whole, whole_log = trainer().fit(data, progress=False, log_every=250)
    with pytest.raises(_Killed):
        trainer().fit(_killing(data, 1100), checkpoint_dir=tmp_path, checkpoint_every=500,
                      log_every=250, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1000
    resumed_trainer = trainer()
    resumed, resumed_log = resumed_trainer.fit(data, checkpoint_dir=tmp_path,
                                               checkpoint_every=500, log_every=250,
                                               progress=False)
    assert resumed_trainer.resampled > 0
    _assert_same_sae(whole, resumed)
    assert whole_log.equals(resumed_log)
    # a finished run resumes to the same result without training further
    again, _ = trainer().fit(data, checkpoint_dir=tmp_path, progress=False)
    _assert_same_sae(whole, again)


def test_resume_with_an_iterable_skips_consumed_batches(tmp_path):
    x, _ = _sparse_data(n=4000, d=8, m=16, p=0.15)
    data = StepBatches(x, 64, seed=1)

    class Stream:  # a deterministic iterable that can be interrupted
        def __init__(self, stop_at=None):
            self.stop_at = stop_at

        def __iter__(self):
            for step in range(10_000):
                if step == self.stop_at:
                    raise _Killed
                yield data(step)

    settings = {"l1_coefficient": 0.5, "lr": 3e-3, "steps": 600}
    whole, _ = train_sae(Stream(), 8, 32, progress=False, **settings)
    with pytest.raises(_Killed):
        train_sae(Stream(stop_at=450), 8, 32, checkpoint_dir=tmp_path, checkpoint_every=200,
                  progress=False, **settings)
    resumed, _ = train_sae(Stream(), 8, 32, checkpoint_dir=tmp_path, checkpoint_every=200,
                           progress=False, **settings)
    _assert_same_sae(whole, resumed)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    x, _ = _sparse_data(n=2000, d=8, m=16)
    train_sae(StepBatches(x, 64), 8, 32, l1_coefficient=0.5, steps=20, checkpoint_dir=tmp_path,
              progress=False)
    with pytest.raises(TrainingError, match=r"l1_coefficient: checkpoint 0\.5 vs now 1\.0") as err:
        train_sae(StepBatches(x, 64), 8, 32, l1_coefficient=1.0, steps=20,
                  checkpoint_dir=tmp_path, progress=False)
    assert "steps" not in str(err.value).split("(")[1].split(")")[0].replace("l1_", "")
    with pytest.raises(TrainingError, match=r"n_features.*lr|lr.*n_features"):
        train_sae(StepBatches(x, 64), 8, 16, l1_coefficient=0.5, lr=0.01, steps=20,
                  checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="cannot read checkpoint"):
        train_sae(StepBatches(x, 64), 8, 32, l1_coefficient=0.5, steps=20,
                  checkpoint_dir=tmp_path, progress=False)


def test_checkpoint_from_other_run_flags_is_refused(tmp_path):
    """run_flags (what the trainer does not see: how the data was made) are saved in the
    checkpoint; a resume with other values is refused naming each, and a checkpoint that
    recorded none cannot be resumed by a caller that passes some."""
    x, _ = _sparse_data(n=2000, d=8, m=16)
    flags = {"--batch-size": 64, "--texts": "corpus"}
    settings = {"l1_coefficient": 0.5, "steps": 10, "checkpoint_dir": tmp_path,
                "progress": False}
    first, _ = train_sae(StepBatches(x, 64), 8, 32, run_flags=flags, **settings)
    with pytest.raises(TrainingError, match=r"--batch-size: 64 then, 32 now") as err:
        train_sae(StepBatches(x, 32), 8, 32, run_flags={**flags, "--batch-size": 32}, **settings)
    assert "--texts" not in str(err.value) and "hint:" in str(err.value)
    again, _ = train_sae(StepBatches(x, 64), 8, 32, run_flags=dict(flags), **settings)
    _assert_same_sae(first, again)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["run_flags"]  # as written before run_flags existed
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingError, match=r"did not record the run's settings"):
        train_sae(StepBatches(x, 64), 8, 32, run_flags=flags, **settings)
    plain, _ = train_sae(StepBatches(x, 64), 8, 32, **settings)  # a library caller without
    _assert_same_sae(first, plain)                                # flags resumes as before


def test_nan_loss_names_step_and_site_and_empty_data_fails():
    x, _ = _sparse_data(n=2000, d=8, m=16)
    data = StepBatches(x, 64)

    def poisoned(step):
        batch = data(step)
        return batch * float("nan") if step == 7 else batch

    with pytest.raises(TrainingError, match=r"step 7 .*resid_out\.3"):
        train_sae(poisoned, 8, 32, steps=50, log_every=20, site="resid_out.3", progress=False)
    with pytest.raises(TrainingError, match="empty"):
        train_sae([], 8, 32, steps=10, progress=False)


# --------------------------------------------------------------------------- evaluation
def test_evaluation_exact_and_zero_dictionaries(model):
    texts = _texts(24, seed=4)
    exact = evaluate_dictionary(model, NeuronBasis(32), "resid_out.0", texts, batch_size=8,
                                progress=False)
    assert exact["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert abs(exact["kl_spliced"]) < 1e-6 and exact["kl_zero"] > 1e-4
    assert exact["ce_spliced"] == pytest.approx(exact["ce_clean"], abs=1e-6)
    assert exact["variance_explained"] == pytest.approx(1.0, abs=1e-5)
    assert exact["l0"] > 30 and exact["dead_fraction"] == 0.0
    assert exact["n_tokens"] == _expected_count(model, texts)

    zero = SparseAutoencoder(32, 64)
    with torch.no_grad():
        zero.W_dec_untied.zero_()
    stats = evaluate_dictionary(model, zero, "resid_out.0", texts, batch_size=8, progress=False)
    assert stats["ce_spliced"] == pytest.approx(stats["ce_zero"], abs=1e-6)
    assert stats["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert stats["kl_spliced"] == pytest.approx(stats["kl_zero"], rel=1e-6)
    assert stats["ce_clean"] == pytest.approx(exact["ce_clean"], abs=1e-6)


def test_evaluation_masks_padding(model):
    """Batching texts of different lengths (padding) must not change any number."""
    texts = _texts(12, seed=5)
    acts = collect_activations(model, "resid_out.1", _texts(60, seed=6), 800, progress=False)
    pca = PCABasis.fit(acts, 8)
    batched = evaluate_dictionary(model, pca, "resid_out.1", texts, batch_size=12, progress=False)
    single = evaluate_dictionary(model, pca, "resid_out.1", texts, batch_size=1, progress=False)
    for key in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "variance_explained", "l0"):
        assert batched[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), key
    assert batched["n_predictions"] == sum(
        len(t.split()) - 1 for t in texts)
    assert 0 < batched["variance_explained"] < 1


# ----------------------------------------------------------------------------- shipping
def test_ship_dictionaries_writes_loadable_sets_and_summary(model, tmp_path):
    config = ShippingConfig(
        sae_sets=(SAESetSpec("sae-sparse", 2.0, n_features=64, steps=60, target_l0=(0.5, 1.0)),
                  SAESetSpec("sae-dense", 0.25, n_features=64, steps=60,
                             relative_to="sae-sparse")),
        max_retries=1, train_tokens=3000, eval_texts=8, batch_size=128, resample_dead_every=50,
        dead_window=20)
    summary = ship_dictionaries(model, tmp_path, _texts(400, seed=7), _texts(8, seed=8),
                                config=config, progress=False, log=lambda _: None)
    assert len(summary) == 3 * 2
    for set_name in ("pca", "sae-sparse", "sae-dense"):
        for layer in (0, 1):
            loaded = load_dictionary(tmp_path / set_name / f"resid_out.{layer}")
            assert loaded.site == f"resid_out.{layer}"
            for key in ("l0", "variance_explained", "dead_fraction", "ce_loss_recovered",
                        "training_steps", "seed"):
                assert key in loaded.meta, (set_name, key)
    sparse = load_dictionary(tmp_path / "sae-sparse" / "resid_out.1")
    assert sparse.meta["training_steps"] == 60 and isinstance(sparse, SparseAutoencoder)
    assert sparse.n_features == 64
    # L0 far above the (unreachable) target: one retry with a larger λ
    first, second = sparse.meta["l1_attempts"]
    assert first["l1_coefficient"] == 2.0 and first["train_l0"] > 1.0
    assert second["l1_coefficient"] > 2.0
    assert sparse.meta["l1_coefficient"] == second["l1_coefficient"]
    dense = load_dictionary(tmp_path / "sae-dense" / "resid_out.1")
    assert dense.meta["l1_coefficient"] == pytest.approx(0.25 * second["l1_coefficient"])
    assert len(dense.meta["l1_attempts"]) == 1
    pca = load_dictionary(tmp_path / "pca" / "resid_out.0")
    assert pca.meta["variance_explained"] == pytest.approx(1.0, abs=1e-4)
    text = (tmp_path / "summary.md").read_text()
    assert "## sae-sparse" in text
    assert f"| resid_out.1 | 64 | {second['l1_coefficient']:.3f} |" in text
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert {(r["set"], r["site"]) for r in rows} == {
        (s, f"resid_out.{layer}") for s in ("pca", "sae-sparse", "sae-dense") for layer in (0, 1)}


def test_train_from_activation_buffer_resumes_identically(model, tmp_path):
    texts = _texts(120, seed=9)

    def buffer():
        return ActivationBuffer(model, "resid_out.1", texts, batch_size=16, buffer_size=256,
                                out_batch_size=64, seed=2)

    settings = {"l1_coefficient": 1.0, "steps": 24, "site": "resid_out.1", "progress": False}
    whole, log = train_sae(buffer(), 32, 64, **settings)
    assert log["step"].iloc[-1] == 24 and whole.site == "resid_out.1"

    class Interrupted:
        def __iter__(self):
            for i, batch in enumerate(buffer()):
                if i == 15:
                    raise _Killed
                yield batch

    with pytest.raises(_Killed):
        train_sae(Interrupted(), 32, 64, checkpoint_dir=tmp_path, checkpoint_every=10,
                  **settings)
    resumed, _ = train_sae(buffer(), 32, 64, checkpoint_dir=tmp_path, checkpoint_every=10,
                           **settings)
    _assert_same_sae(whole, resumed)


def test_l1_retry_rule():
    spec = SAESetSpec("s", 2.0, target_l0=(5.0, 15.0), min_variance_explained=0.9)
    assert next_l1_coefficient(2.0, 30.0, 0.95, spec) > 2.0  # too dense: stronger L1
    assert next_l1_coefficient(2.0, 2.0, 0.80, spec) < 2.0  # too sparse: weaker L1
    assert next_l1_coefficient(2.0, 8.0, 0.93, spec) is None  # on target
    lower = next_l1_coefficient(2.0, 6.0, 0.85, spec)  # in range but poor reconstruction
    assert lower is not None and lower < 2.0
    assert lower == pytest.approx(2.0 * (6.0 / 9.0) ** (1 / 0.8))
    assert next_l1_coefficient(2.0, 14.5, 0.85, spec) is None  # no room left to densify
    assert next_l1_coefficient(2.0, 30.0, 0.9, SAESetSpec("d", 2.0)) is None  # no target
