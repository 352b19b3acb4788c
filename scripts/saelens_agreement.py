"""How closely SAELens runs our SAEs: every rule, with and without standardization.

For each rule a random SAE (d_in 64, d_sae 512, non-zero biases; thresholds estimated where the
rule has one) is written with ``to_saelens``, loaded by ``sae_lens.SAE.load_from_disk`` and run on
4,096 activations with an offset and a scale. Printed: the SAELens class, the largest absolute
difference of SAELens's ``encode`` from ours and of its ``decode(encode(x))`` from our
``forward(x).reconstruction``, whether the kept features are the same, and whether ``convert
--from saelens`` gives back the same tensors. Needs sae-lens (``pip install "hf-topafa[saelens]"``).

    python scripts/saelens_agreement.py
"""

import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402

import hf_topafa.integrations.saelens  # noqa: E402, F401 - registers our architectures
from hf_topafa import SAEConfig, SparseAutoencoder  # noqa: E402
from hf_topafa.integrations.saelens_export import to_saelens  # noqa: E402
from hf_topafa.interop.convert import convert  # noqa: E402
from hf_topafa.sae.rules import ACTIVATIONS, get_rule  # noqa: E402

D_IN, D_SAE, N = 64, 512, 4096


def random_sae(activation: str, normalization: str) -> SparseAutoencoder:
    k = 16 if get_rule(activation).needs_k else None
    config = SAEConfig(
        d_in=D_IN, d_sae=D_SAE, activation=activation, k=k, input_normalization=normalization
    )
    torch.manual_seed(0)
    sae = SparseAutoencoder(config)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.3)
        if activation == "jumprelu":
            sae.threshold.uniform_(0, 0.1)
        if get_rule(activation).threshold == "estimated":
            sae.train()(activations(seed=5))
    return sae.eval()


def activations(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D_IN, generator=g) * 3 + torch.randn(D_IN, generator=g)


def main() -> None:
    from sae_lens import SAE

    warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty")
    torch.set_num_threads(1)
    x = activations(seed=1)
    print(f"{'rule':<14}{'normalization':<14}{'SAELens class':<14}"
          f"{'max|encode|':>13}{'max|recon|':>13}  same kept  round trip")  # fmt: skip
    for activation in ACTIVATIONS:
        for normalization in ("none", "layer_norm"):
            sae = random_sae(activation, normalization)
            with tempfile.TemporaryDirectory() as tmp:
                folder = to_saelens(sae, Path(tmp) / "sl")
                loaded = SAE.load_from_disk(folder)
                back = convert("saelens", folder)
            with torch.no_grad():
                theirs, ours = loaded.encode(x), sae(x)
                recon = loaded.decode(theirs)
            same = all(torch.equal(back.state_dict()[n], t) for n, t in sae.state_dict().items())
            print(
                f"{activation:<14}{normalization:<14}{type(loaded).__name__:<14}"
                f"{(theirs - ours.feature_acts).abs().max().item():>13.2e}"
                f"{(recon - ours.reconstruction).abs().max().item():>13.2e}"
                f"  {str(torch.equal(theirs != 0, ours.feature_acts != 0)):<9}  {same}"
            )


if __name__ == "__main__":
    main()
