"""Weak-to-strong classification on LM features (Burns et al. 2023; papers/001 §4.3): docs/classification.md."""
