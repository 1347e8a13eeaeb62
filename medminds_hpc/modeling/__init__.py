"""Models: which base to load and how (loading.py: hub / local / tiny; 4-bit; unsloth), adapters, and later heads,
routers and MoE. Nothing heavy is imported here or at module level below: torch/transformers load inside functions."""
