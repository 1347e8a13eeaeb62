"""The one training mechanism every stage shares, its checkpoints and its metrics."""
