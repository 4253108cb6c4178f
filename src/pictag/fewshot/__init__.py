"""Few-shot classification: task folders, episode sampling, `fewshot` runs and episodic evaluation."""
