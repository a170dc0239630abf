"""The web chat in headless Chromium (Debian's chromium, driven over the DevTools protocol).

A person's view: open the page, see the model's lineage and exam scores, type a question, watch the
answer stream in token by token, ask a follow-up that uses the history, switch the language. The
page's answers are compared with the API's answers for the same conversation (greedy decoding).
A screenshot is written to ``$DEVOPS_MODEL_SCREENSHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.plugins.serve import API_KEY, LINEAGE

pytestmark = pytest.mark.browser

# Records every text the page rendered into the last assistant bubble: each call of the page's own
# showAnswer (one per streamed delta; the page is a classic script, so its global can be wrapped), and
# every state the DOM went through (a MutationObserver, which batches the changes of one task: how many
# states it sees depends on how the browser's reads split the stream, so it is not counted).
OBSERVE = """
window.__rendered = [];
(show => { window.showAnswer = (bubble, text) => { window.__rendered.push(text); return show(bubble, text); }; })(window.showAnswer);
window.__seen = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll('.msg.assistant');
  if (!bubbles.length) return;
  const b = bubbles[bubbles.length - 1], text = b.dataset.markdown ?? b.textContent;
  if (window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
}).observe(document.getElementById('messages'),
           {childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ['data-markdown']});
true
"""


def type_and_send(page, text: str) -> None:
    page.eval(f"document.getElementById('input').value = {json.dumps(text)}; true")
    page.eval("document.getElementById('send').click(); true")


def last_answer(page, n: int) -> str:
    page.wait_for(f"document.querySelectorAll('.msg.assistant[data-done=\"true\"]').length >= {n}", timeout=90)
    return page.eval("(b => b.dataset.markdown ?? b.textContent)(Array.from(document.querySelectorAll('.msg.assistant')).pop())")


def api_answer(server, messages, max_tokens, key=None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(server.url + "/v1/chat/completions", headers=headers, timeout=60,
                   json={"messages": messages, "max_tokens": max_tokens})
    return r.json()["choices"][0]["message"]["content"]


def screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("DEVOPS_MODEL_SCREENSHOTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_web_chat_streams_answers_with_history_and_shows_lineage(bpe_server, chromium, tmp_path):
    page = chromium
    page.navigate(bpe_server.url + "/")
    # lineage and scores from --lineage-file, via /v1/info
    page.wait_for("document.querySelectorAll('#lineage li').length > 0")
    lineage = page.eval("Array.from(document.querySelectorAll('#lineage li')).map(li => li.textContent)")
    assert lineage[:3] == LINEAGE["lineage"]
    scores = page.eval("document.getElementById('scores').textContent")
    assert "62.0%" in scores and "devops-eval-k8s" in scores
    assert page.eval("document.getElementById('model-name').textContent") == "tiny-bpe"

    # first question (Chinese): the answer streams in, piece by piece
    page.eval("document.getElementById('max-tokens').value = '48'; true")
    page.eval(OBSERVE)
    question = "如何排查 Pod 一直处于 CrashLoopBackOff？"
    type_and_send(page, question)
    answer = last_answer(page, 1)
    seen = page.eval("window.__seen")
    expected = api_answer(bpe_server, [{"role": "user", "content": question}], 48)
    assert answer == expected and answer
    rendered = page.eval("window.__rendered")
    assert len(rendered) >= 3, f"the answer should be rendered delta by delta, saw {rendered!r}"
    assert all(b.startswith(a) and b != a for a, b in zip(rendered, rendered[1:])), "each update extends the previous text"
    assert rendered[-1] == answer
    growing = [s for s in seen if s]
    assert growing and growing[-1] == answer, f"the bubble's DOM should end on the answer, saw {growing!r}"
    assert all(b.startswith(a) for a, b in zip(growing, growing[1:])), "each DOM state extends the previous text"
    user_text = page.eval("document.querySelector('.msg.user').textContent")
    assert user_text == question

    # follow-up (English): the page sends the history
    follow = "How do I restart a Deployment?"
    type_and_send(page, follow)
    answer2 = last_answer(page, 2)
    expected2 = api_answer(bpe_server, [{"role": "user", "content": question}, {"role": "assistant", "content": answer},
                                        {"role": "user", "content": follow}], 48)
    assert answer2 == expected2
    status = page.eval("document.getElementById('status').textContent")
    assert "已接收" in status or "chunks received" in status

    shot = page.screenshot(screenshot_dir(tmp_path) / "web-chat.png")
    assert shot.stat().st_size > 10_000

    # language switch: labels change, the conversation stays
    before = page.eval("document.getElementById('send').textContent")
    page.eval("document.getElementById('lang').click(); true")
    after = page.eval("document.getElementById('send').textContent")
    assert {before, after} == {"发送", "Send"}
    assert page.eval("document.querySelectorAll('.msg').length") == 4

    # new chat forgets the history
    page.eval("document.getElementById('new-chat').click(); true")
    assert page.eval("document.querySelectorAll('.msg').length") == 0


def test_web_chat_asks_for_the_api_key(qwen_server, chromium, tmp_path):
    page = chromium
    page.navigate(qwen_server.url + "/")
    page.wait_for("document.getElementById('settings').open === true")
    assert "API" in page.eval("document.getElementById('status').textContent")
    page.eval(f"const k = document.getElementById('api-key'); k.value = {json.dumps(API_KEY)};"
              "k.dispatchEvent(new Event('change')); true")
    page.wait_for("document.getElementById('model-name').textContent === 'tiny-qwen'")
    page.eval("document.getElementById('max-tokens').value = '8'; true")
    type_and_send(page, "什么是 Kubernetes？")
    answer = last_answer(page, 1)
    assert answer == api_answer(qwen_server, [{"role": "user", "content": "什么是 Kubernetes？"}], 8, key=API_KEY)
    assert page.eval("document.querySelectorAll('.msg.error').length") == 0
    page.screenshot(screenshot_dir(tmp_path) / "web-chat-key.png")


def test_web_page_is_self_contained():
    """No CDN, no external fetch: the page must work offline in a cluster without internet."""
    from devops_workloads.serve.app import WEB_PAGE

    html = WEB_PAGE.read_text(encoding="utf-8")
    for marker in ("http://", "https://", "//cdn", "<link ", "src="):
        assert marker not in html, f"the web page refers to an external resource: {marker}"


MARKDOWN = """# Rollback

Run `kubectl rollout undo` **now**, then *watch*:

```bash
kubectl rollout status deploy/web <script>window.__pwned = 1</script>
```

1. check [the runbook](https://example.invalid/runbook)
2. tell [nobody](javascript:window.__pwned=2)

- <img src=x onerror="window.__pwned=3"> stays text
> quoted <b>bold?</b>
"""


def test_answers_render_as_markdown_and_html_in_them_stays_text(chromium, bpe_server):
    """The page's own renderer (no library, no CDN): structure from Markdown, and every piece of
    HTML or javascript: link in a model's answer shown as text, never run."""
    page = chromium
    page.navigate(bpe_server.url + "/")
    dom = page.eval(f"""(() => {{
        const root = renderMarkdown({json.dumps(MARKDOWN)});
        document.getElementById('messages').appendChild(root);
        const q = s => Array.from(root.querySelectorAll(s));
        return {{
          h1: q('h1').map(e => e.textContent), code: q('p code').map(e => e.textContent), strong: q('strong').map(e => e.textContent),
          em: q('em').map(e => e.textContent), pre: q('pre code').map(e => [e.dataset.lang, e.textContent]),
          ol: q('ol li').length, ul: q('ul li').map(e => e.textContent), links: q('a').map(e => [e.textContent, e.getAttribute('href'), e.rel]),
          quote: q('blockquote').map(e => e.textContent), elements: q('*').map(e => e.tagName.toLowerCase()),
          handlers: q('*').filter(e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).length,
        }};
    }})()""")
    assert dom["h1"] == ["Rollback"]
    assert dom["code"] == ["kubectl rollout undo"] and dom["strong"] == ["now"] and dom["em"] == ["watch"]
    assert dom["pre"] == [["bash", "kubectl rollout status deploy/web <script>window.__pwned = 1</script>"]]
    assert dom["ol"] == 2
    assert dom["links"] == [["the runbook", "https://example.invalid/runbook", "noopener noreferrer"]]
    assert '<img src=x onerror="window.__pwned=3"> stays text' in dom["ul"]
    assert dom["quote"] == ["quoted <b>bold?</b>"]
    assert not {"script", "img", "b"} & set(dom["elements"]) and dom["handlers"] == 0
    page.eval("new Promise(r => setTimeout(r, 300))")  # an onerror would have fired by now
    assert page.eval("window.__pwned === undefined")
    # the page loads nothing from elsewhere: its policy allows only its own origin
    csp = page.eval("document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]').content")
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
