"""Server-side domain training (CBP-Tuning's first stage): a prompt generator per domain, LLM frozen.

domain     the domain file: tasks in the client's task format, and texts never to train on
settings   every option of ``cbpt-server train-generator``
trainer    the loop: the engine's own forward with gradients on
state      resumable checkpoints (safetensors + JSON)
report     the training curve
"""
