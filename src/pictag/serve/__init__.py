"""HTTP serving: a FastAPI app in front of a queue (Redis Streams, or in-process) and dynamically batching workers."""
