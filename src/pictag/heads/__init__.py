"""Classification heads over embeddings: zero-shot text prototypes and few-shot methods behind one `Head` API."""

from pictag.heads.base import Head, create_head, list_heads, register_head

__all__ = ["Head", "create_head", "list_heads", "register_head"]
