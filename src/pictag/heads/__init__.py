"""Heads over embeddings: zero-shot text prototypes, few-shot methods and trained classifiers, one `Head` kind.

To add a head: subclass `Head` in a module of this package, set `name` and `kind`, implement `forward` (features to
logits) and, for a few-shot head, `_fit`; list it as "module:Class" in `base.HEADS` (a plug-in outside the package
calls `HEADS.register(name, "module:Class")`). Keep every tensor the forward uses in buffers or parameters, and return
from `config()` the options that rebuild its shapes: `load_head(head.config(), head.state_dict())` then gives the same head.
"""

from pictag.heads.base import Head, check_head, create_head, list_heads, load_head, scores_from_logits

__all__ = ["Head", "check_head", "create_head", "list_heads", "load_head", "scores_from_logits"]
