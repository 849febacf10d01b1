"""Diagnostic datasets and filler alignment rebuilt per tokenizer: byte-level BPE (RoBERTa) and SentencePiece
(XLM-R) pairs get the tokenizer's own filler piece, its special-token layout in the ids, the position map and
the paper's token types, and patch end to end on a model of that architecture."""

from __future__ import annotations

import numpy as np
import pytest
from arch_checkpoints import TOKENIZERS

from jaxmech.data.align import align_with_filler
from jaxmech.data.demo import load_demo
from jaxmech.data.diagnostic import build_tfc1
from jaxmech.hf.tokenizer import PairTokenizer


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tok(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"data-tok-{request.param}")
    TOKENIZERS[request.param](folder)
    return request.param, PairTokenizer.from_pretrained(folder)


def test_tfc1_pairs_use_the_tokenizers_filler_and_layout(tok):
    name, t = tok
    res = build_tfc1(load_demo(), t)
    assert res.pairs, res.stats
    fmt = t.format
    for p in res.pairs[:20]:
        assert p.problems() == []
        n = len(p.baseline_ids)
        assert len(p.perturbed_ids) == n and p.position_map == list(range(n))
        q, b_doc = t.split_pair_ids(p.baseline_ids)
        _, p_doc = t.split_pair_ids(p.perturbed_ids)
        assert q == t.word_pieces([p.query])[0]
        k = len(t.word_pieces([f"x {p.term}"])[0]) - len(t.word_pieces(["x"])[0])  # the term's pieces mid-text
        assert b_doc[-k:] == [t.filler_id] * k and p_doc[:-k] == b_doc[:-k]
        assert p.changed_positions() == list(range(n - len(fmt.suffix) - k, n - len(fmt.suffix)))
        assert len(p.token_types) == n
        assert p.token_types[: len(fmt.prefix)] == ["CLS"] * len(fmt.prefix)
        mid = len(fmt.prefix) + len(q)
        assert p.token_types[mid: mid + len(fmt.middle)] == ["SEP1"] * len(fmt.middle)
        assert p.token_types[n - len(fmt.suffix):] == ["SEP2"] * len(fmt.suffix)
        assert set(p.token_types[n - len(fmt.suffix) - k: n - len(fmt.suffix)]) == {"Dinj"}
        assert p.baseline_token_type_ids == t.pair_ids(q, b_doc)[1]


def test_align_with_filler_pads_with_the_tokenizers_filler(tok):
    name, t = tok
    p = align_with_filler(t, "what is a cat", "a cat sat on a mat", "a cat sat on a mat in paris")
    q, b_doc = t.split_pair_ids(p.baseline_ids)
    _, p_doc = t.split_pair_ids(p.perturbed_ids)
    extra = len(p_doc) - len(t.word_pieces(["a cat sat on a mat"])[0])
    assert extra > 0 and len(b_doc) == len(p_doc)
    assert b_doc[-extra:] == [t.filler_id] * extra
    assert np.array_equal(p.baseline_token_type_ids, t.pair_ids(q, b_doc)[1])


@pytest.mark.torch
def test_sites_for_a_model_prints_its_architecture_identities_and_shapes(tmp_path, capsys):
    from arch_checkpoints import TINY_ARCHS, arch_checkpoint

    from jaxmech.cli import main

    folder = arch_checkpoint(tmp_path / "m", "electra", TINY_ARCHS["electra-proj"][1], seed=1)
    assert main(["sites", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "electra (ElectraForSequenceClassification), 3 layers, 5 heads, d_model 30" in out
    assert "| `embed` | `[pos, 14]` |" in out and "| `z` | `[3, pos, 5, 6]` |" in out
    assert "projected 14 -> 30" in out and "resid_pre[l+1] = normalized_resid_post[l]" in out
    assert "`pooled`" not in out
    assert main(["sites", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.torch
@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_text_to_run_patching_matches_the_torch_hooks_end_to_end(tmp_path, model_type):
    """A text triple aligned with the tokenizer's filler, patched by `run_patching`, equals the independent
    PyTorch forward-hook implementation on the same transformers checkpoint."""
    pytest.importorskip("torch")
    from arch_checkpoints import TINY_ARCHS, arch_checkpoint
    from conftest import PARITY_ATOL
    from transformers import AutoModelForSequenceClassification

    from benchmarks.baselines.torch_hooks import TorchPatcher
    from jaxmech.hf.loading import load_model
    from jaxmech.patching.run import run_patching

    hf_tok = TOKENIZERS[model_type](tmp_path / "tok")
    sizes = dict(TINY_ARCHS[model_type][1], vocab_size=len(hf_tok))
    folder = arch_checkpoint(tmp_path / "model", model_type, sizes, seed=12, init=0.2)
    hf_tok.save_pretrained(str(folder))
    lm = load_model(folder, use_cache=False)
    pair = align_with_filler(lm.tokenizer, "what is a cat", "a cat sat on a mat", "a cat sat on a mat in paris")
    res = run_patching(lm, [pair], ["head_all_pos_z"], metric="raw")
    patcher = TorchPatcher(AutoModelForSequenceClassification.from_pretrained(folder))
    n = len(pair.baseline_ids)
    base = (pair.baseline_ids, pair.baseline_token_type_ids, [1] * n)
    src = patcher.cache((pair.perturbed_ids, pair.perturbed_token_type_ids, [1] * n))
    ref = patcher.head_all_pos(base, src, "z")
    np.testing.assert_allclose(res.raw["head_all_pos_z"][0], ref, atol=PARITY_ATOL, rtol=0)
    assert np.abs(ref - patcher.score(base)).max() > 1e-3, "heads must have visible effects"
