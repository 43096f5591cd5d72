"""Tracing real Hugging Face LLMs: thresholds, perplexity and FFN activation masks (imports torch)."""
