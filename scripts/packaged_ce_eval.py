"""python scripts/packaged_ce_eval.py --json benchmarks/results/packaged_ce_eval.json

The packaged cross-encoder (``packaged-ce``: fp16-stored weights loaded as fp32) beside the fp32 model it was
made from (``../shared/models/minilm6-ce-distilled``, or ``--fp32 FOLDER``), on what the fp32 model's README
reports: the held-out evaluation of ``configs/train_distil_minilm.toml`` (its 20 held-out queries x 100
passages, 128 tokens, labels the teacher's and TAS-B's top-10 of each query; `jaxmech.train.evaluate`) and
the two logits of the example pair ("how do tides form"). Also the largest |logit difference| over all
held-out pairs, and the wall time of each part (under whatever load the machine has: a cost, not a speed).
Needs the shared MS MARCO data (``../shared/data``). Writes numbers only, no text from the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

QUERY = "how do tides form"
DOCS = ["Tides are caused by the gravitational pull of the moon and the sun on the oceans.",
        "Cats sleep for most of the day."]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--fp32", default="../shared/models/minilm6-ce-distilled")
    ap.add_argument("--config", default="configs/train_distil_minilm.toml")
    args = ap.parse_args()

    import jax.numpy as jnp
    import numpy as np

    from jaxmech.hf.loading import load_model
    from jaxmech.train import load_config
    from jaxmech.train.data import build_pair_table, load_candidates, split_queries, tasb_reference
    from jaxmech.train.evaluate import evaluate_run, run_from_rows
    from jaxmech.train.inference import score_table
    from jaxmech.train.teachers import make_teacher

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    models = {"fp16_stored": load_model("packaged-ce", max_length=cfg.model.max_length),
              "fp32": load_model(args.fp32, max_length=cfg.model.max_length)}
    out: dict = {"fp32_folder": args.fp32, "config": args.config, "example_pair": {}, "heldout": {}, "wall_s": {}}
    for name, lm in models.items():
        enc = lm.tokenizer.encode_pairs([QUERY] * len(DOCS), DOCS)
        out["example_pair"][name] = np.asarray(lm.model(*map(jnp.asarray, enc.arrays)).score, np.float64).tolist()
    ex = out["example_pair"]
    out["example_pair"]["max_abs_diff"] = float(np.abs(np.subtract(ex["fp16_stored"], ex["fp32"])).max())

    cands = load_candidates(cfg.data)
    _, held = split_queries(list(cands.queries), cfg.data.heldout_fraction, cfg.data.split_seed)
    table = build_pair_table(cands, held, models["fp32"].tokenizer)
    t = time.perf_counter()
    teacher = make_teacher(cfg.teacher, cands)
    teacher_scores = np.asarray(teacher.score_rows(cands, table.qids, table.doc_ids), np.float64)
    out["wall_s"]["teacher"] = time.perf_counter() - t
    reference: dict[str, dict[str, float]] = {}
    for (q, d), s in tasb_reference(cfg.data.path or None).items():
        reference.setdefault(q, {})[d] = s
    teacher_run = run_from_rows(table.qids, table.doc_ids, teacher_scores)
    scores = {}
    for name, lm in models.items():
        t = time.perf_counter()
        scores[name] = np.asarray(score_table(lm.model, table, batch_size=cfg.eval.batch_size), np.float64)
        out["wall_s"][f"score_{name}"] = time.perf_counter() - t
        run = run_from_rows(table.qids, table.doc_ids, scores[name])
        out["heldout"][name] = evaluate_run(run, k=cfg.eval.k, label_top_k=cfg.eval.label_top_k,
                                            teacher=teacher_run, reference=reference)
    out["heldout"]["queries"], out["heldout"]["pairs"] = len(held), len(table)
    out["heldout"]["max_abs_logit_diff"] = float(np.abs(scores["fp16_stored"] - scores["fp32"]).max())
    out["wall_s"]["total"] = time.perf_counter() - t0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
