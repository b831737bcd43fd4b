"""Quantized weights, applied to a built model from outside.

``config`` reads a checkpoint's ``quantization_config`` (or ``--quantization fp8`` for a float
checkpoint) into a ``QuantConfig``; ``apply`` swaps the model's projection layers (``nn.Linear``)
for quantized ones before the weights are read, so the loader fills packed tensors in place;
``linear`` holds those layers and their de-quantizing reference path.
"""
from worker.model.quant.apply import finalize_quantized, quantize_model, weight_report
from worker.model.quant.config import QuantConfig, resolve_quant_config

__all__ = ["QuantConfig", "finalize_quantized", "quantize_model", "resolve_quant_config", "weight_report"]
