"""How a patched run is recomputed: restarted post-LN blocks (`post_ln`), restarted pre-LN blocks (`pre_ln`,
ModernBERT) and hooked full forwards (`full_forward`, the reference)."""
