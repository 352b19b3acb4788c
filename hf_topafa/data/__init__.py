"""Where activations come from: language models, text, harvests and their caches, synthetic worlds.

The bundled files (a WikiText-2 sample, the model-card template) live in this folder too.
"""
