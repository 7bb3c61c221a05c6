"""How tests compare floats (STYLE rule 15): one place for the tolerances, each with its reason.

Two kinds of comparison:

* **The same computation on the same inputs** — a save/load round trip, the same call twice,
  positions that a change cannot reach, turns that only add exact zeros — is bit-for-bit on any
  machine: :data:`EXACT` (or ``torch.equal``).
* **The same maths through different kernels or reduction orders** — a padded row (explicit mask)
  vs the row alone (SDPA's fused causal path), a batch vs each row alone, permuted slots, one
  worker vs two — agrees only to fp32 rounding, and how far depends on the CPU's kernels:
  :data:`KERNEL`.
"""

EXACT = {"rtol": 0.0, "atol": 0.0}

# fp32 rounds at 6e-8 of a value; through a 2-layer debug model (matmuls of width ≤ 64, softmax,
# RMSNorm) the roundings add up to ≤ 4e-5 on logits, hidden states and STM of order 1–10
# (measured on an AMD EPYC: 1.0e-5 padded vs alone, 3.6e-5 batched vs alone consolidation; another
# EPYC gave 1.4e-5 where this one gave 1.0e-5). Errors are absolute at the scale of the tensor, not
# of each element, so atol matches rtol. A real bug (a padded token read, a slot misrouted, a
# position shifted) moves values by ≥ 1e-2: two orders of magnitude above this.
KERNEL = {"rtol": 1e-4, "atol": 1e-4}

# "This change had an effect": far above anything KERNEL allows, so rounding noise cannot pass
# for a real difference (a changed token, another conversation's memory).
CHANGED = 1e-2
