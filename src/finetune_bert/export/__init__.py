"""Export: a trained model folder written as ONNX (fp32, int8) and checked."""
