"""QuantizeRun: GPTQ int4 (or 3/8-bit) quantization that proves the model still works.

    devops-model run -f examples/local/quantize.yaml
    devops-model quantize --model DIR --out DIR --bits 4 --group-size 128 --calibration URI

Modules: ``calibration`` (datasets → rendered, tokenized samples + held-out text), ``gptq`` (the
GPTQModel backend writing the ``gptq`` checkpoint format), ``measure`` (sizes from safetensors
headers, perplexity), ``entry`` (the worker contract: quantize, verify, artifact), ``cli`` (the
``devops-model quantize`` command). Import stays light: torch and GPTQModel load when work starts.
"""
