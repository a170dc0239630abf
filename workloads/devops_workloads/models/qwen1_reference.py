"""Qwen-1's released code as the reference: build tiny checkpoints with it and record what it does.

Runs ONLY in the reference environment (transformers 4.32 + tiktoken + einops, see
``reference_env.py``), never imported by the project:

    REF/bin/python qwen1_reference.py build OUT --code ../shared/seed/qwen1 --kind chat --seed 0
    REF/bin/python qwen1_reference.py run OUT requests.json results.json

``build`` writes a folder as a user downloads one: ``config.json`` (``model_type: qwen``,
``auto_map``, the released key names with tiny sizes), safetensors weights drawn by
``QWenLMHeadModel`` itself, the remote code, ``qwen.tiktoken``, ``tokenizer_config.json`` and a
``generation_config.json`` like Qwen-7B(-Chat)'s.

``run`` answers a JSON list of requests with the original code (fp32, CPU):

* ``{"op": "tokenize", "texts": [...]}`` → ``QWenTokenizer.encode`` ids (special tokens allowed, its default);
* ``{"op": "logits", "texts": [...], "vocab_stride": k}`` → fp32 logits per text, every position ×
  every k-th vocabulary row plus the whole last row (saved as ``.pt`` beside the results);
* ``{"op": "exam", "queries": [...], "letters": [[...]]}`` → the seed's scoring (codefuse-devops-eval):
  ``tokenizer.encode(query)``, one forward pass, ``logits[0][-1][encode(letter)]``, highest wins
  (ties to the earlier letter); returns predictions and the option logits;
* ``{"op": "chat", "query": q, "history": [[q, a], ...], "system": s, "max_new_tokens": n,
  "max_window_size": w}`` → ``make_context`` tokens and ``model.chat``'s greedy answer and ids.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

#: Tiny shape (hidden 128 = GPTQ group size; QWenMLP halves intermediate_size: 768 → 384 = 3 × 128).
TINY = dict(hidden_size=128, num_attention_heads=4, kv_channels=32, num_hidden_layers=2, intermediate_size=768,
            seq_length=2048, max_position_embeddings=2048, vocab_size=151936)
CODE_FILES = ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py", "cpp_kernels.py",
              "tokenization_qwen.py", "qwen.tiktoken", "tokenizer_config.json", "LICENSE", "NOTICE")
GENERATION = {
    # Qwen-7B-Chat's generation_config.json
    "chat": {"chat_format": "chatml", "eos_token_id": 151643, "pad_token_id": 151643, "max_window_size": 6144,
             "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.8, "repetition_penalty": 1.1},
    # Qwen-7B's
    "base": {"chat_format": "raw", "eos_token_id": 151643, "pad_token_id": 151643, "stop_words_ids": [[151643]],
             "max_new_tokens": 512, "do_sample": True, "top_k": 0, "top_p": 0.8},
}


def _teach_stop(model, out: Path, code: Path, query: str, after: int) -> None:
    """Make greedy ``model.chat(query)`` end with <|im_end|> after ``after`` tokens: the lm_head row
    of <|im_end|> becomes 1.5 × the row of the token it would have chosen next (a random model
    never ends by itself, and the stop has to be tested)."""
    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(out))
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    mod = sys.modules[type(model).__module__]
    _, context = mod.make_context(tok, query, history=[], system="You are a helpful assistant.", chat_format="chatml")
    ids = torch.tensor([context])
    with torch.no_grad():
        for _ in range(after + 1):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        model.lm_head.weight[tok.im_end_id] = 1.5 * model.lm_head.weight[int(nxt)]


def build(out: Path, code: Path, kind: str, seed: int, shape: dict | None = None, init_std: float = 0.02,
          stop_query: str | None = None, stop_after: int = 3) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        shutil.copyfile(code / name, out / name)
    cfg = json.loads((code / "config.json").read_text())
    cfg.update(TINY, **(shape or {}))
    cfg.update(rotary_emb_base=10000, rope_theta=10000, use_dynamic_ntk=True, use_logn_attn=True,
               bf16=False, fp16=False, fp32=False, initializer_range=init_std, use_flash_attn="auto")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    config = AutoConfig.from_pretrained(str(out), trust_remote_code=True)
    config.fp32 = True  # CPU; the saved config.json keeps the released "auto" precision flags
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    with torch.no_grad():  # RMSNorm weights start at 1; draw them so a swapped norm cannot pass unseen
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("c_attn.bias"):
                p.copy_(0.02 * torch.randn_like(p))
    if stop_query:
        _teach_stop(model, out, code, stop_query, stop_after)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))  # as released, not as this process resolved it
    (out / "generation_config.json").write_text(json.dumps(GENERATION[kind], indent=2))
    for py in out.glob("*.py"):  # save_pretrained may copy code; keep the released files
        shutil.copyfile(code / py.name, py) if (code / py.name).exists() else None


def _load(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, fp32=True,
                                                 torch_dtype=torch.float32).eval()
    return tok, model


def run(folder: Path, requests_file: Path, results_file: Path) -> None:
    import torch
    from transformers import GenerationConfig

    tok, model = _load(folder)
    results = []
    for n, req in enumerate(json.loads(requests_file.read_text())):
        op = req["op"]
        if op == "tokenize":
            results.append({"ids": [tok.encode(t) for t in req["texts"]]})
        elif op == "logits":
            # every position × every stride-th vocabulary row, and the whole last row (a full
            # 151,936-wide matrix per position would be hundreds of MB per prompt)
            path = results_file.with_suffix(f".{n}.pt")
            stride = req.get("vocab_stride", 1)
            out = []
            with torch.no_grad():
                for t in req["texts"]:
                    logits = model(input_ids=torch.tensor([tok.encode(t)])).logits[0].float()
                    out.append({"sub": logits[:, ::stride].clone(), "last": logits[-1].clone()})
            torch.save(out, str(path))
            results.append({"file": str(path)})
        elif op == "exam":
            preds, scores = [], []
            with torch.no_grad():
                for query, letters in zip(req["queries"], req["letters"]):
                    ids = torch.tensor([tok.encode(query)])
                    # the seed's logits[0][-1]: only the last position goes through lm_head here
                    hidden = model.transformer(input_ids=ids)[0][:, -1]
                    last = model.lm_head(hidden)[0]
                    opts = [float(last[tok.encode(x)[0]]) for x in letters]
                    preds.append(letters[max(range(len(opts)), key=lambda i: (opts[i], -i))])
                    scores.append(opts)
            results.append({"predictions": preds, "scores": scores})
        elif op == "chat":
            gen = GenerationConfig.from_pretrained(str(folder))
            gen.do_sample, gen.max_new_tokens, gen.repetition_penalty = False, req.get("max_new_tokens", 16), 1.0
            gen.top_p, gen.top_k = None, None
            if req.get("max_window_size"):
                gen.max_window_size = req["max_window_size"]
            mod = sys.modules[type(model).__module__]
            history = [tuple(h) for h in req.get("history", [])]
            raw, context = mod.make_context(tok, req["query"], history=history, system=req.get("system", "You are a helpful assistant."),
                                            max_window_size=gen.max_window_size, chat_format=gen.chat_format)
            with torch.no_grad():
                answer, _ = model.chat(tok, req["query"], history=history, system=req.get("system", "You are a helpful assistant."),
                                       generation_config=gen)
                out = model.generate(torch.tensor([context]), generation_config=gen,
                                     stop_words_ids=[[tok.im_end_id], [tok.im_start_id]])
            results.append({"raw_text": raw, "context": context, "answer": answer,
                            "generated": out[0][len(context):].tolist()})
        else:
            raise SystemExit(f"unknown op {op!r}")
    results_file.write_text(json.dumps(results, ensure_ascii=False))


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--code", type=Path, required=True)
    b.add_argument("--kind", choices=("base", "chat"), default="chat")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--shape", type=json.loads, default=None, help="JSON overrides of the tiny shape")
    b.add_argument("--init-std", type=float, default=0.02)
    b.add_argument("--stop-query", default=None, help="make greedy chat on this query stop at <|im_end|> (see _teach_stop)")
    b.add_argument("--stop-after", type=int, default=3)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("requests", type=Path)
    r.add_argument("results", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "build":
        build(a.out, a.code, a.kind, a.seed, a.shape, a.init_std, a.stop_query, a.stop_after)
    else:
        sys.path.insert(0, str(a.folder))
        run(a.folder, a.requests, a.results)


if __name__ == "__main__":
    main(sys.argv[1:])
