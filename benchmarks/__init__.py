"""jaxmech's benchmarks (scripts) and the PyTorch baselines they compare against (`benchmarks.baselines`)."""
