"""Benchmark: the built-in server under 1, 4 and 16 concurrent clients vs sequential ``generate``.

    .venv/bin/python bench/serve.py            # writes bench/results/serve.json (~3 minutes on 2 cores)

What a user would do without the built-in server is call ``model.generate`` once per request,
one after the other (the seed's api_demo serves requests one at a time). So on the same tiny Qwen2
model, with the same prompts and exactly the same number of new tokens per request
(``ignore_eos`` / ``min_new_tokens``):

* ours: a real ``devops-model serve`` process (uvicorn, SSE streaming over loopback HTTP,
  continuous batching) driven by C client threads that each send requests back to back;
  throughput = generated tokens / wall time; time to first token (TTFT) = request sent → first
  content chunk received, measured by the client.
* anchor: ``transformers`` ``generate`` in-process (no HTTP at all), one request after another.
  Its throughput does not change with C. Its TTFT for C clients is what those clients would see
  from a server that runs generate sequentially: a request waits for the ones queued before it,
  so for C simultaneous requests the k-th first token arrives after (k-1) whole generations plus
  one prefill; the figure is the mean over k = 1..C (measured generate and prefill times).

Throughput ratios are ours / anchor, TTFT ratios anchor / ours: above 1 means the server is better.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 32
LEVELS = (1, 4, 16)
REQUESTS = {1: 6, 4: 12, 16: 32}  # per level, so every level runs a few seconds
PROMPTS = [
    "如何排查 Pod 一直处于 CrashLoopBackOff？",
    "How do I roll back a Kubernetes Deployment?",
    "Prometheus 和 Grafana 各自负责什么？",
    "Write a CI/CD pipeline stage that runs unit tests.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def anchor(model_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p in PROMPTS]
    ids = [tok(p, return_tensors="pt", add_special_tokens=False).input_ids for p in prompts]
    with torch.inference_mode():
        model.generate(ids[0], max_new_tokens=4, do_sample=False)  # warm-up
        gen_times, prefill_times = [], []
        for i in range(12):
            x = ids[i % len(ids)]
            t0 = time.perf_counter()
            out = model.generate(x, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            gen_times.append(time.perf_counter() - t0)
            assert out.shape[1] - x.shape[1] == NEW_TOKENS
            t0 = time.perf_counter()
            model.generate(x, max_new_tokens=1, do_sample=False)
            prefill_times.append(time.perf_counter() - t0)
    gen = statistics.mean(gen_times)
    prefill = statistics.mean(prefill_times)
    ttft = {c: statistics.mean((k - 1) * gen + prefill for k in range(1, c + 1)) for c in LEVELS}
    return {"tokens_per_s": NEW_TOKENS / gen, "gen_s": gen, "prefill_s": prefill, "ttft": ttft}


def drive(url: str, clients: int, total: int) -> dict:
    import httpx

    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    counter = iter(range(total))

    def worker(wid: int) -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": NEW_TOKENS,
                        "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
                t0 = time.perf_counter()
                first = None
                with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    r.raise_for_status()
                    for line in r.iter_lines():
                        if not line.startswith("data:") or line.strip() == "data: [DONE]":
                            continue
                        ev = json.loads(line[5:])
                        if first is None and ev["choices"] and ev["choices"][0]["delta"].get("content") is not None \
                                and ev["choices"][0]["delta"].get("role") is None:
                            first = time.perf_counter() - t0
                        if ev.get("usage"):
                            with lock:
                                tokens[0] += ev["usage"]["completion_tokens"]
                with lock:
                    ttfts.append(first if first is not None else time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    assert tokens[0] == total * NEW_TOKENS, (tokens[0], total * NEW_TOKENS)
    return {"tokens_per_s": tokens[0] / wall, "ttft_mean": statistics.mean(ttfts),
            "ttft_p50": statistics.median(ttfts), "wall_s": wall}


def main() -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO / "workloads"))
    sys.path.insert(0, str(REPO))
    from devops_workloads.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model_dir = build_tiny_model(tmp / "tiny-qwen", "qwen", seed=0)
    print("anchor: sequential transformers generate …", flush=True)
    base = anchor(model_dir)

    port = free_port()
    exe = Path(sys.executable).parent / "devops-model"
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen([str(exe), "serve", "--model", str(model_dir), "--port", str(port), "--max-concurrency", "16",
                             "--max-batch-size", "16", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start; see " + str(tmp / "serve.log"))
            time.sleep(0.5)
        drive(url, 2, 4)  # warm-up
        ours = {}
        for c in LEVELS:
            print(f"ours: {c} concurrent client(s) …", flush=True)
            ours[c] = drive(url, c, REQUESTS[c])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    # The machine is shared: measure the anchor again after the server and use the mean of both.
    print("anchor again …", flush=True)
    after = anchor(model_dir)
    spread = abs(after["tokens_per_s"] - base["tokens_per_s"]) / base["tokens_per_s"]
    base = {"tokens_per_s": (base["tokens_per_s"] + after["tokens_per_s"]) / 2,
            "gen_s": (base["gen_s"] + after["gen_s"]) / 2, "prefill_s": (base["prefill_s"] + after["prefill_s"]) / 2}
    base["ttft"] = {c: statistics.mean((k - 1) * base["gen_s"] + base["prefill_s"] for k in range(1, c + 1)) for c in LEVELS}

    rows = []
    for c in LEVELS:
        rows.append({
            "figure": f"chat throughput, {c} concurrent client{'s' if c > 1 else ''} ({NEW_TOKENS} new tokens each)",
            "ours": round(ours[c]["tokens_per_s"], 1), "anchor_name": "sequential transformers generate (in-process)",
            "anchor": round(base["tokens_per_s"], 1), "ratio": round(ours[c]["tokens_per_s"] / base["tokens_per_s"], 2),
            "unit": "tokens/s",
            "notes": f"built-in server over loopback HTTP+SSE, continuous batching; {REQUESTS[c]} requests in {ours[c]['wall_s']:.1f}s",
        })
    for c in LEVELS:
        rows.append({
            "figure": f"time to first token, {c} concurrent client{'s' if c > 1 else ''} (mean)",
            "ours": round(ours[c]["ttft_mean"], 3), "anchor_name": "sequential generate, queued requests (mean over the queue)",
            "anchor": round(base["ttft"][c], 3), "ratio": round(base["ttft"][c] / ours[c]["ttft_mean"], 2),
            "unit": "s",
            "notes": f"ours p50 {ours[c]['ttft_p50']:.3f}s measured by the client; anchor = mean of (k-1)·{base['gen_s']:.3f}s "
                     f"generate + {base['prefill_s']:.3f}s prefill",
        })
    load = os.getloadavg()[0]
    result = {
        "area": "serve",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only); load average {load:.1f} at the end",
        "date": time.strftime("%Y-%m-%d"),
        "model": "tiny Qwen2 (hidden 128, 2 layers, real Qwen tokenizer), float32, greedy",
        "anchor_spread": f"sequential generate measured before and after the server differed by {spread:.0%}",
        "rows": rows,
    }
    out = REPO / "bench" / "results" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for r in rows:
        print(f"{r['figure']:<62} ours {r['ours']:>9} {r['unit']:<9} anchor {r['anchor']:>9}  ratio {r['ratio']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
