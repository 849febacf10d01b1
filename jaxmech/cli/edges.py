"""The ``jaxmech analyze edges`` arguments (parsed here, run by `jaxmech.analysis.edges.edges_step`).

    jaxmech analyze edges --model ../shared/models/minilm6-ce-distilled --source shared --limit 16 \\
        --method eap-ig-inputs --steps 5 --verify-top-k 50 --out edges.json --eap-ig-json circuit.json

``--ablation mean|both`` patches the edges outside a circuit to their means over the pairs (both: two curves);
``--prune-threshold X`` exports the circuit of every edge with ``|mean effect| >= X``.
"""

from __future__ import annotations

HEADLINES = ("method", "n_pairs", "n_edges", "verified_spearman", "top_recall", "top_recall_scope", "smallest_80",
             "cpr", "cmd")
"""What the command prints."""


def add_edges_parser(sub, common) -> None:
    """Adds ``edges`` to the ``analyze`` subparsers (``common`` adds --model/--out/--source/--dataset/--qids)."""
    q = sub.add_parser("edges", help="edge-level circuits (exact edge patching, EAP, EAP-IG) and their faithfulness")
    common(q)
    q.add_argument("--method", default="eap-ig-inputs",
                   choices=["exact", "eap", "eap-ig-inputs", "eap-ig-activations"])
    q.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    q.add_argument("--limit", type=int, default=16, help="pairs")
    q.add_argument("--docs-per-query", type=int, default=2)
    q.add_argument("--n-queries", type=int)
    q.add_argument("--max-length", type=int, help="leave out pairs longer than this many tokens")
    q.add_argument("--verify-top-k", type=int, default=50, help="top edges verified by exact edge patches")
    q.add_argument("--n-random", type=int, default=50, help="random edges verified besides the top ones")
    q.add_argument("--recall-n", type=int, default=50, help="top_recall: of the exact top N")
    q.add_argument("--exact-all", action="store_true", default=None,
                   help="exact patches of every edge (recall over all edges; slow)")
    q.add_argument("--heads", help="connections to report, e.g. '2.9,1.1->5.7,5.1,5.5,5.3'")
    q.add_argument("--eap-ig-json", help="also write the 80%% circuit in EAP-IG's graph JSON")
    q.add_argument("--seed", type=int, default=0, help="random verification sample")
    q.add_argument("--ablation", default="perturbed", choices=["perturbed", "mean", "both"],
                   help="edges outside a circuit patched to their perturbed values, their means over the pairs, "
                   "or both (two faithfulness curves)")
    q.add_argument("--prune-threshold", type=float,
                   help="export the circuit of every edge whose |mean effect| is at least this (default: the "
                   "smallest circuit recovering 80%%)")
    q.add_argument("--spans", action="store_true", default=None,
                   help="also the top span-aware edges (CLS, query term, document matches, injected term, ...)")
