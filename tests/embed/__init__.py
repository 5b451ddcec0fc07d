"""The encoders: the hash-N test encoder, ONNX Runtime and OpenVINO against torch, the backend choice."""
