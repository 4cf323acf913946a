"""Write a prompt bank of N distinct object prompts.

    python -m prompts.generate --n 100000 --out s3://bucket/prompts.jsonl [--config prompts/configs/llm.yaml]
                               [--base-url http://127.0.0.1:8000/v1] [--model NAME] [--set key=value …]

With an endpoint (``--base-url``, ``llm.base_url`` or ``$OPENAI_BASE_URL``) the prompts come from that
OpenAI-compatible chat API (key from ``$OPENAI_API_KEY`` or the variable named by ``llm.api_key_env``);
otherwise from the deterministic offline taxonomy composer. The source is printed and recorded in
every row and in ``<out>.summary.json``. Rerunning with the same output resumes; usable responses are
cached (bounded). Spend is bounded (``llm.max_requests``, ``max_total_tokens``, ``max_usd``,
``max_consecutive_failures``, a per-request deadline): a run that reaches a bound writes its summary and
exits 3; exit 2 is a usage/config error.
"""
from __future__ import annotations

import argparse
import logging
import sys

from mvboost.config import ConfigError, load_config
from mvboost.prompts.llm import FatalLLMError, PromptGenConfig, generate_bank


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m prompts.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML config (see prompts/configs/)")
    p.add_argument("--n", type=int)
    p.add_argument("--out")
    p.add_argument("--source", choices=["auto", "llm", "offline"])
    p.add_argument("--base-url")
    p.add_argument("--model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides = list(a.overrides)
    for key, val in (("n", a.n), ("out", a.out), ("source", a.source), ("llm.base_url", a.base_url),
                     ("llm.model", a.model)):
        if val is not None:
            overrides.append(f"{key}={val}")
    try:
        cfg = load_config(PromptGenConfig, a.config, overrides)
        summary = generate_bank(cfg)
    except (ConfigError, FatalLLMError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    return 3 if getattr(summary, "stopped", "") else 0


if __name__ == "__main__":
    sys.exit(main())
