"""Heads over embeddings: zero-shot text prototypes, few-shot methods and trained classifiers, one `Head` kind.

To add a head: subclass `Head` in a module of this package, set `kind`, implement `forward` (features to logits)
and, for a few-shot head, `_fit`; decorate it with `@register_head("name")` and import its module in
`base._load_heads`. Keep every tensor the forward uses in buffers or parameters, and return from `config()` the
options that rebuild its shapes: `load_head(head.config(), head.state_dict())` then gives the same head.
"""

from pictag.heads.base import Head, check_head, create_head, list_heads, load_head, register_head, scores_from_logits

__all__ = ["Head", "check_head", "create_head", "list_heads", "load_head", "register_head", "scores_from_logits"]
