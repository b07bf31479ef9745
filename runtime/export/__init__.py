"""Export a trained run to verified ONNX: `sandbox export` and `sandbox generate`.

- `pipeline`: `export()` and `Exporter`, the steps below composed;
- `source`: a run directory's plan and weights as one fp32 model, and data;
- `prune`: structured pruning of heads and MLP channels;
- `distill`: knowledge distillation of the pruned student;
- `graphs`: the full and KV-cache decoder ONNX graphs of a model;
- `quantize`: int8 / int8-static / int4 quantization for onnxruntime;
- `evaluate`: logits, agreement, perplexity, latency and the decode check;
- `report`: the `model.report.json` contract;
- `onnx_files`: file layout, sizes and onnxruntime sessions (torch-free);
- `generate`: text generation from an exported file (torch-free).

This package's `__init__` imports nothing, so that `sandbox generate` loads
onnxruntime only, not torch.
"""
