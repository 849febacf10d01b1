"""python scripts/train_report.py configs/train_distil_minilm.toml --json benchmarks/results/train_distil.json

and:

    python scripts/train_report.py configs/train_bm25_imitation.toml --json benchmarks/results/train_bm25.json

Runs (or resumes) a training config with `jaxmech.train.Trainer`, then records in a small JSON file: the
held-out metrics of the untrained model (the seeded fresh head) and of the trained one, how the labels were
defined, the training throughput, the wall time, and the exported folder's parity with ``transformers``
(``BertForSequenceClassification`` logits vs jaxmech's on 64 held-out pairs, fp32). Weights stay in the run
folder (``runs/<name>``, ignored by git); the JSON holds numbers only, no text from the data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from jaxmech.device import cpu_name

LABELS = {
    "vs_teacher": "binary labels: the teacher's top-{k} of the 100 candidates of each held-out query are "
    "relevant; correlations are with the teacher's raw scores on the same pairs",
    "vs_reference": "binary labels: the top-{k} of each held-out query by the TAS-B dot product shipped with "
    "the "
    "data (og_score of tfc1_add_append_target_qids_scores.csv), a relevance-trained model "
    "independent of the teacher; correlations are with og_score",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--json", required=True, help="where to write the report")
    ap.add_argument("--out", default=None, help="run folder (default: the config's)")
    args = ap.parse_args()

    import jax
    import numpy as np

    from jaxmech.train import Trainer, load_config
    from jaxmech.train.inference import score_batch
    from jaxmech.train.trainer import transformers_parity

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out_dir=args.out)
    result = trainer.fit(resume=True)
    wall = time.perf_counter() - t0
    out = trainer.out_dir
    before = result.eval_before or json.loads((out / "eval_before.json").read_text())
    after = result.eval_after

    teacher_vs_reference = None
    if trainer.teacher_scores is not None and cfg.eval.reference != "none":
        from jaxmech.train.evaluate import evaluate_run, run_from_rows

        t = trainer.heldout_table
        teacher_run = run_from_rows(t.qids, t.doc_ids, trainer.teacher_scores["heldout"])
        teacher_vs_reference = evaluate_run(
            teacher_run, k=cfg.eval.k, label_top_k=cfg.eval.label_top_k, reference=trainer.reference_scores()
        )["vs_reference"]

    parity = None
    if result.export_dir is not None:
        t = trainer.heldout_table
        rows = np.arange(min(64, len(t)))
        ids, tt, mask = t.gather(rows)
        model = trainer.model_from_params(result.params)
        ours = score_batch(model, ids, tt, mask)
        parity = {
            "pairs": len(rows),
            "seq_len": int(ids.shape[1]),
            "max_abs_logit_diff": transformers_parity(result.export_dir, ids, tt, mask, ours),
            "hf_class": "BertForSequenceClassification",
        }

    report = {
        "question": f"does training with {args.config} beat the untrained model on held-out queries?",
        "config": args.config,
        "fingerprint": cfg.fingerprint(),
        "device": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "teacher": trainer.teacher_scores["name"].split(":")[0] if trainer.teacher_scores else None,
        "data": {
            "train_queries": len(trainer.train_qids),
            "train_pairs": len(trainer.train_table),
            "heldout_queries": len(trainer.heldout_qids),
            "heldout_pairs": len(trainer.heldout_table),
            "truncated_train_pairs": trainer.train_table.n_truncated,
            "max_length": cfg.model.max_length,
        },
        "labels": {k: v.format(k=cfg.eval.label_top_k) for k, v in LABELS.items()},
        "steps": result.step,
        "resumed_from": result.resumed_from,
        "train_pairs_per_s": result.pairs_per_s,
        "wall_s_this_invocation": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "eval_before": before,
        "eval_after": after,
        "teacher_vs_reference": teacher_vs_reference,
        "transformers_parity": parity,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
