"""Training tasks: last-blocks fine-tuning of an image encoder with a residual cosine classifier head."""
