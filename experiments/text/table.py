"""The issue-19 table: one row per setting of experiments/text/run.sh, read from each setting's udm-generate JSON
(runs/text/gen/<setting>/*.json) and the NELBO evaluations; prints Markdown."""

import json
import re
import sys
from pathlib import Path


def rows(runs: Path):
    for folder in sorted((runs / "gen").iterdir()):
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if found:
            yield folder.name, json.loads(found[-1].read_text())


def nelbo(runs: Path, run: str) -> str:
    log = runs / run / "eval-nelbo.log"
    hit = re.search(r"NELBO/token\W*([0-9.]+)\W*± ([0-9.]+)", log.read_text()) if log.exists() else None
    return f"{hit.group(1)} ± {hit.group(2)}" if hit else "n/a"


def main(runs: Path) -> None:
    print("| setting | form | copied lines | gen. PPL | x real | entropy | / real | poems/s | net calls |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows(runs):
        m = r["metrics"]
        calls = r.get("network_calls")
        net = f"{calls['made']} (+{calls['reused']} reused)" if calls else "-"
        judged = (f"{m['gen_ppl']:.1f} | {m['gen_ppl'] / m['real_ppl']:.2f} | {m['entropy']:.3f} | {m['entropy'] / m['real_entropy']:.3f}"
                  if "gen_ppl" in m else "- | - | - | -")
        print(f"| {name} | {m['form_accuracy']:.1%} | {m['copy_rate']:.1%} | {judged} | {r['texts_per_second']:.1f} | {net} |")
    any_row = next((r for _, r in rows(runs) if "real_ppl" in r["metrics"]), None)
    if any_row:
        m = any_row["metrics"]
        print(f"\nHeld-out real quatrains under the judge: perplexity {m['real_ppl']:.1f}, unigram entropy {m['real_entropy']:.3f} nats.")
    print(f"\nToken NELBO per token on held-out quatrains: mask {nelbo(runs, 'quatrain_mask')}, "
          f"uniform {nelbo(runs, 'quatrain_uniform')} nats (the edit model has no tractable bound).")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/text"))
