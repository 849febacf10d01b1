"""Scoring the paper's demo pair with a run's model (for the demo-logit comparison)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmech.files import PACKAGED_NAMES, resolve_model_path
from jaxmech.report.compare import PAPER


def resolve_model(model: str, results_path: Path) -> str | None:
    """A loadable reference for the model named in a run's meta: ``packaged``/``packaged-ce``, an existing
    folder (as given, or relative to the results), or a hub id (``owner/name`` that is not a path); None if
    none fits."""
    if not model:
        return None
    if model in PACKAGED_NAMES:
        return model
    for cand in (Path(model), results_path.parent / model, results_path / model):
        if cand.is_dir():
            return str(cand)
    parts = model.split("/")
    if len(parts) == 2 and not model.startswith((".", "/")) and all(parts):
        return model
    return None


def score_demo_pair(model: str, results_path: Path) -> dict:
    """The run's model on the paper's demo pair (filler-aligned as the paper; raw logits, no sigmoid).

    Args:
        model: ``meta["model"]`` of the run.
        results_path: The run directory or ``.npz`` (relative model folders are tried against it).

    Returns:
        ``{"score_baseline", "score_perturbed", "kind", "length", "model"}``, or ``{"error": why}`` when the
        model cannot be loaded here (never raises).
    """
    ref = resolve_model(model, results_path)
    if ref is None:
        return {"error": f"model {model!r} is not a folder here or a hub id"}
    d = PAPER["demo"]
    try:
        import jax.numpy as jnp

        from jaxmech.data.align import align_with_filler
        from jaxmech.hf.loading import load_model

        if ref in PACKAGED_NAMES:
            ref = str(resolve_model_path(ref))
        lm = load_model(ref)
        tok = lm.tokenizer
        if lm.kind == "bi":
            q = lm.model(*map(jnp.asarray, tok.encode_texts([d["query"]]).arrays)).embedding
            docs = lm.model(*map(jnp.asarray, tok.encode_texts([d["baseline_doc"], d["perturbed_doc"]]).arrays))
            s = np.asarray(lm.model.similarity(q, docs.embedding)).ravel()
            return {
                "score_baseline": float(s[0]),
                "score_perturbed": float(s[1]),
                "kind": "bi",
                "model": ref,
                "length": None,
            }
        pair = align_with_filler(tok, d["query"], d["baseline_doc"], d["perturbed_doc"], name="demo")
        scores = []
        for ids, tt in (
            (pair.baseline_ids, pair.baseline_token_type_ids),
            (pair.perturbed_ids, pair.perturbed_token_type_ids),
        ):
            arr = (jnp.asarray([ids]), jnp.asarray([tt]), jnp.ones((1, len(ids)), jnp.int32))
            scores.append(float(np.asarray(lm.model(*arr).score).ravel()[0]))
        return {
            "score_baseline": scores[0],
            "score_perturbed": scores[1],
            "kind": "cross",
            "model": ref,
            "length": len(pair.baseline_ids),
        }
    except Exception as err:  # noqa: BLE001 - any load/scoring failure becomes a line in the report
        return {"error": f"could not score with {ref}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
