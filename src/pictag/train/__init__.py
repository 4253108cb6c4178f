"""Training: one engine (`engine.Engine`, on Lightning Fabric) and its tasks in a registry (`task.create_task`).

`pictag train` is `pictag.train.run.train`; `pictag fewshot-train` is `pictag.train.finetune.finetune`, the same engine
with the `fewshot` task. Nothing here is imported by `pictag --help`.
"""
