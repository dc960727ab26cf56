"""Evaluation of generated weights: few-shot heads, fine-tuning curves, memorization."""
