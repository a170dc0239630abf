"""EvalRun: multiple-choice exams with the seed's method (codefuse-devops-eval), exact and fast.

    devops-model eval --model DIR --exams ROOT --preset devops-574 --shots 0,5 --out DIR
    devops-model run -f examples/local/eval.yaml

Modules: ``exams`` (CSV sources and presets), ``prompts`` (the seed's prompt, base/chat),
``scoring`` (seed logits / lm-evaluation-harness log-likelihood), ``engine`` (batched,
prefix-KV-cached forward passes and the plain one-question reference), ``entry`` (the worker
contract and the results files), ``cli`` (the ``devops-model eval`` command).
"""
