"""Every file SAELens, dictionary_learning and circuit-tracer wrote with their own code
(tests/fixtures/peers/, rebuilt by ``make fixtures``) loads through featcircuits with the
peer's features, reconstructions and transcoder outputs, and the site / hook name it was saved
for; or is refused with an error naming the variant and what is missing. No peer is
installed at test time: the fixtures hold what the peer computed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("ecosystem_matrix",
                                               ROOT / "tools" / "ecosystem_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("ecosystem_matrix", matrix)  # dataclasses look their module up
_spec.loader.exec_module(matrix)

FOLDERS = matrix.fixture_folders()
TOLERANCE = 1e-5

# variant → words the refusal must contain (the variant's setting and what is missing)
REFUSED = {
    "normalize_constant_norm_rescale": ["constant_norm_rescale", "per-input decoder scale"],
    "normalize_layer_norm": ["layer_norm", "per-input decoder scale"],
}


def _id(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def test_fixtures_cover_the_three_peers():
    peers = {folder.parent.name.rsplit("-", 1)[0] for folder in FOLDERS}
    assert peers == {"saelens", "dictionary_learning", "circuit_tracer"}
    assert len(FOLDERS) >= 25
    size = sum(p.stat().st_size for p in (ROOT / "tests/fixtures/peers").rglob("*") if p.is_file())
    assert size < 2_000_000


@pytest.mark.parametrize("folder", FOLDERS, ids=_id)
def test_fixture_loads_exactly_or_is_refused(folder):
    torch.set_num_threads(1)
    outcome = matrix.check_fixture(folder)
    meta = json.loads((folder / "expected.json").read_text())
    if "spec" in meta:  # loaded by spec: the hub asked for exactly the files SAELens did
        assert outcome.downloads == meta["downloads"]
    if outcome.variant in REFUSED:
        assert outcome.refused is not None, f"{outcome.variant} loaded but should be refused"
        for word in REFUSED[outcome.variant]:
            assert word in outcome.refused
        return
    assert outcome.refused is None, outcome.refused
    assert outcome.features <= TOLERANCE
    assert outcome.reconstruction <= TOLERANCE
    assert outcome.output is None or outcome.output <= TOLERANCE
    assert outcome.sites == outcome.expected_sites
    if meta["hook_name"] is not None:  # SAELens 6 keeps it under cfg["metadata"]
        assert outcome.hook_name == meta["hook_name"]


@pytest.mark.parametrize("variant,wrong", [
    # each fixture tells the right computation from the wrong one a reader could make
    ("saelens-6.54.0/topk_rescale", "ignore rescale_acts_by_decoder_norm"),
    ("saelens-6.54.0/jumprelu", "pre * mask instead of relu(pre) * mask"),
    ("circuit_tracer-0.5.0/jumprelu_skip", "relu(pre) * mask instead of pre * mask"),
    ("dictionary_learning-0.1.0/BatchTopKSAE", "per-row top-k instead of the threshold"),
    ("dictionary_learning-0.1.0/AutoEncoder_april_update", "no decoder normalisation"),
])
def test_fixtures_catch_the_wrong_computation(variant, wrong):
    """The fixtures are sharp: the computation the issue found wrong misses them by far."""
    from featcircuits.dictionaries import load_dictionary

    folder = ROOT / "tests/fixtures/peers" / variant
    expected = load_file(str(folder / "expected.safetensors"))
    x, features = expected["x"], expected["features"]
    dictionary = load_dictionary(folder)
    with torch.no_grad():
        if "rescale" in wrong or "normalisation" in wrong:
            # the stored, unfolded weights
            pre = _unfolded_pre(folder, x)
            ours = (torch.relu(pre) if "normalisation" in wrong
                    else _topk(pre, dictionary.k))
        elif "top-k" in wrong:
            ours = _topk(dictionary.pre_activations(x), int(expected["features"].ne(0)
                                                             .sum(-1).float().mean()))
        else:
            pre = dictionary.pre_activations(x)
            mask = pre > dictionary.threshold
            ours = pre * mask if "pre * mask instead" in wrong else torch.relu(pre) * mask
    assert float((ours - features).abs().max()) > 0.05


def _topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    top = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def _unfolded_pre(folder: Path, x: torch.Tensor) -> torch.Tensor:
    if (folder / "sae_weights.safetensors").is_file():
        t = load_file(str(folder / "sae_weights.safetensors"))
        return (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    t = torch.load(folder / "ae.pt", weights_only=True)
    return (x - t["bias"]) @ t["encoder.weight"].T + t["encoder.bias"]


def test_ecosystem_page_is_generated_from_the_fixtures():
    """docs/ecosystem.md's table is what tools/ecosystem_matrix.py computes now (error values
    compared by verdict, ≤ 1e-5 or not, so another machine's rounding does not matter)."""
    torch.set_num_threads(1)
    table = matrix.render([matrix.check_fixture(folder) for folder in FOLDERS])
    text = matrix.PAGE.read_text(encoding="utf-8")
    assert matrix.bucketed(matrix.page_with_table(text, table)) == matrix.bucketed(text), (
        "docs/ecosystem.md is stale: run python tools/ecosystem_matrix.py")


@pytest.mark.slow  # builds and loads a 4-layer GPT-2 (about 10 s on 2 shared cores)
def test_saelens6_sae_patches_gpt2_without_a_site_argument(checkpoint_dirs, tmp_path):
    """The SAE SAELens 6 saved at blocks.3.hook_resid_post (hook name only under
    cfg["metadata"]) patches a GPT-2 model with no site= anywhere; the patched logits equal
    a plain-torch hook on block 3's output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    from featcircuits import load_model
    from featcircuits.dictionaries import load_dictionary
    from featcircuits.model.loading import underlying_module
    from featcircuits.patching.experiment import PatchingExperiment
    from tests.support.factories import PROMPTS, QUIET

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=64, vocab_size=64,
                        bos_token_id=62, eos_token_id=62)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    AutoTokenizer.from_pretrained(checkpoint_dirs["gpt2"]).save_pretrained(tmp_path / "gpt2")
    model = load_model(str(tmp_path / "gpt2"))
    sae = load_dictionary(ROOT / "tests/fixtures/peers/saelens-6.54.0/standard", model=model)
    assert sae.site == "resid_out.3" and sae.meta["model_name"] == "gpt2"
    experiment = PatchingExperiment(model, sae, PROMPTS, settings=QUIET)
    active = experiment.active_features()
    logits, _ = experiment.patched_logits([active])

    plain = underlying_module(model)
    block = plain.transformer.h[3]
    captured = {}
    grab = block.register_forward_hook(lambda m, a, out: captured.__setitem__(
        "clean", out[0] if isinstance(out, tuple) else out))  # tuples on transformers 4
    with torch.no_grad():
        plain(experiment.prompts.clean_ids)
    grab.remove()
    mask = experiment.prompts.token_mask.float()[..., None]
    chosen = torch.zeros(sae.n_features)
    chosen[active] = 1.0

    def patch(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        delta = ((sae.encode(captured["clean"]) - sae.encode(hidden)) * chosen * mask) @ sae.W_dec
        return (hidden + delta, *output[1:]) if isinstance(output, tuple) else hidden + delta

    hook = block.register_forward_hook(patch)
    with torch.no_grad():
        rows = torch.arange(len(PROMPTS))
        manual = plain(experiment.prompts.corrupt_ids).logits[rows,
                                                              experiment.prompts.final_positions]
    hook.remove()
    assert (logits[0] - manual).abs().max() < 1e-4
    assert (logits[0] - experiment.corrupt_logits).abs().max() > 1e-3


def test_topk_transcoder_is_refused_at_save_time(tmp_path):
    """circuit-tracer's transcoder files store no k and its loader reads them as ReLU, so a
    TopK transcoder is refused before anything is written."""
    from featcircuits.dictionaries import Transcoder, save_dictionary
    from featcircuits.errors import DictionaryError

    transcoder = Transcoder(8, 16, activation="topk", k=3, input_site="resid_mid.0",
                            site="mlp_out.0")
    with pytest.raises(DictionaryError, match="store no k"):
        save_dictionary(transcoder, tmp_path / "t")
    assert not (tmp_path / "t" / "transcoder.safetensors").exists()


def test_saelens_transcoder_with_an_unmapped_input_hook_is_refused(tmp_path):
    """A SAELens transcoder whose input hook has no featcircuits site is refused rather than
    loaded as reading its output site."""
    import shutil

    from featcircuits.dictionaries import load_dictionary
    from featcircuits.errors import DictionaryLoadError

    folder = tmp_path / "t"
    shutil.copytree(ROOT / "tests/fixtures/peers/saelens-6.54.0/transcoder", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.1.attn.hook_q"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryLoadError, match="hook_q.*no featcircuits site"):
        load_dictionary(folder)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_per_input_normalisation_refusal_states_saelens_formula(norm):
    """The refusal's formula is what SAELens computed on its own fixture (plain torch), and
    the scale s(x) differs between inputs by far: no fixed directions reproduce decode."""
    from featcircuits.dictionaries import load_dictionary
    from featcircuits.errors import DictionaryLoadError

    folder = ROOT / "tests/fixtures/peers/saelens-6.54.0" / f"normalize_{norm}"
    expected = load_file(str(folder / "expected.safetensors"))
    t = load_file(str(folder / "sae_weights.safetensors"))
    x = expected["x"]
    if norm == "constant_norm_rescale":
        scale, shift = x.norm(dim=-1, keepdim=True) / x.shape[-1] ** 0.5, 0.0
        normed = x / scale
    else:
        shift, scale = x.mean(-1, keepdim=True), (x - x.mean(-1, keepdim=True)).std(
            -1, keepdim=True)
        normed = (x - shift) / (scale + 1e-5)
    features = torch.relu((normed - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    assert torch.allclose(features, expected["features"], atol=1e-5)
    reconstruction = scale * (features @ t["W_dec"] + t["b_dec"]) + shift
    assert torch.allclose(reconstruction, expected["reconstruction"], atol=1e-5)
    assert float(scale.max() / scale.min()) > 1.4  # 1.48 and 1.53 on these fixtures
    with pytest.raises(DictionaryLoadError, match="per-input decoder scale") as info:
        load_dictionary(folder)
    assert "s(x)·(c @ W_dec + b_dec)" in str(info.value)
