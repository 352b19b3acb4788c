"""A trained dictionary read by another selection rule: the weights as trained, the rule swapped.

A k-free rule can read a dictionary trained with a k (``risk_batch`` reading TopK's), and TopK
at another k can read any dictionary. This is how the k-free rules were screened on the
synthetic worlds (``scripts/synth_reread.py``) and what ``hf-topafa evaluate --read-with``
does. ``parse_reading`` imports no torch, so the command line checks a reading before loading.
"""

from __future__ import annotations

from .rules import get_rule

READING_FORMS = "NAME, NAME:K for a rule that needs k, or NAME@LEVEL to fix an estimated threshold"


def parse_reading(spec: str) -> tuple[str, int | None, float | None]:
    """``spec`` as (rule name, k, level): "risk_batch", "topk:16", "afa_batch@1.75"."""
    rest, _, level = spec.partition("@")
    name, _, k = rest.partition(":")
    try:
        rule = get_rule(name)
        k_value = int(k) if k else None
        level_value = float(level) if level else None
    except ValueError as err:
        raise ValueError(f"reading {spec!r}: {err} (forms: {READING_FORMS})") from None
    if rule.needs_k != (k_value is not None) or (k_value is not None and k_value < 1):
        need = f"needs a positive k ({name}:K)" if rule.needs_k else "takes no k"
        raise ValueError(f"reading {spec!r}: {name} {need} (forms: {READING_FORMS})")
    if level_value is not None and rule.threshold != "estimated":
        raise ValueError(f"reading {spec!r}: {name} has no estimated threshold to fix at a level")
    return name, k_value, level_value


def read_with(sae, spec: str):
    """A copy of ``sae`` whose features are selected by the rule ``spec`` names. A threshold
    the dictionary estimated or learned for its own rule is dropped, so a rule that needs one
    starts from its own estimate, unless ``@LEVEL`` fixes it (one global level on
    decoder-scaled activations, in the SAE's input scale)."""
    from .configuration_sae import SAEConfig
    from .modeling_sae import SparseAutoencoder

    name, k, level = parse_reading(spec)
    fields = sae.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        fields.pop(key, None)
    fields.update(activation=name, k=k)
    read = copy_weights(sae, SparseAutoencoder(SAEConfig(**fields)))
    if level is not None:
        read.threshold.fill_(level)
    return read.to(sae.W_dec.device).eval()


def copy_weights(source, target):
    """``target`` with ``source``'s weights, less a threshold ``source`` estimated or learned for
    its own rule (``target``'s rule starts from its own). Both must have the same shapes and
    parameters; returns ``target``."""
    weights = {key: value for key, value in source.state_dict().items() if key != "threshold"}
    missing, unexpected = target.load_state_dict(weights, strict=False)
    lacking = sorted(set(missing) - {"threshold"})
    if lacking or unexpected:
        raise ValueError(
            f"the saved SAE's parameters do not fit: missing {lacking or 'none'}, extra "
            f"{sorted(unexpected) or 'none'} (encoder_bias must match)"
        )
    return target
