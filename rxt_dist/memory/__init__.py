"""Working on a trained model's memory: StateX expansion of the STM and the capacity study.

``statex`` grows the STM of a trained model (:func:`expand_stm`); ``capacity`` measures recall
against the number of facts held and the distance (:func:`evaluate_capacity_models`). See
docs/statex.md.
"""

from rxt_dist.memory.statex import (
    EXPANSION_MODES,
    METADATA_KEY,
    Expansion,
    ExpansionConfig,
    expand_model,
    expand_stm,
    read_expansion,
    read_metadata,
)

__all__ = ["EXPANSION_MODES", "METADATA_KEY", "Expansion", "ExpansionConfig", "expand_model", "expand_stm",
           "read_expansion", "read_metadata"]
