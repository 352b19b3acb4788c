"""Other libraries reading, running and training this package's SAEs.

- ``saelens_export``: ``to_saelens`` writes an SAE as a SAELens folder (``hf-topafa convert --to
  saelens``, ``hf-topafa push --format saelens``); needs no SAELens.
- ``saelens``: importing it registers top-AFA and the k-free rules with SAELens (inference and
  training classes); needs ``pip install "hf-topafa[saelens]"``.

Nothing is imported here, so that ``import hf_topafa.integrations.saelens`` alone decides whether
SAELens is needed.
"""
