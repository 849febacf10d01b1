"""Independent PyTorch implementations of the paper's patching procedures, used as references by the
cross-implementation tests and as baselines by the benchmarks (`torch_hooks`: the paper's loop, one hooked
forward per site, and batched hooks, B sites per forward; `torch_edges`: exact edge patching with frozen
LayerNorms). Nothing in ``jaxmech`` imports them."""
