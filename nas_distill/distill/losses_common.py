"""Loss-type names shared by every engine (no framework imports).

A config may spell a loss type in any case or by an alias (``kl``, ``kld``, ``cos``); both engines map it
to one canonical name here, so a stage means the same thing in PyTorch and in Keras.
"""

from __future__ import annotations

from nas_distill.vocabulary import LOSS_ALIASES as _ALIASES  # noqa: F401
from nas_distill.vocabulary import LOSS_TYPES, canonical_loss_type  # noqa: F401
