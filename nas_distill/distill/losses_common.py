"""Loss-type names shared by every engine (no framework imports).

A config may spell a loss type in any case or by an alias (``kl``, ``kld``, ``cos``); both engines map it
to one canonical name here, so a stage means the same thing in PyTorch and in Keras.
"""

from __future__ import annotations

LOSS_TYPES = ("MSE", "KL", "L1", "CE", "CosineSimilarity")
_ALIASES = {name.lower(): name for name in LOSS_TYPES}
_ALIASES.update({"cos": "CosineSimilarity", "cosine": "CosineSimilarity", "kld": "KL", "kldiv": "KL"})


def canonical_loss_type(name: str) -> str:
    """``'kl'`` -> ``'KL'``; unknown names raise ``ValueError`` listing the known ones."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown loss type {name!r}; known: {', '.join(LOSS_TYPES)}")
    return _ALIASES[key]
