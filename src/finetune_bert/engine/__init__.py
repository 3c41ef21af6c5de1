"""The engine: a model folder opened, and a model run in torch or onnxruntime."""
