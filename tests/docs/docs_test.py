#!/usr/bin/env python3
"""Docs stay true to the code: docs/flags.md names every flag the programs define, and every
relative link in the Markdown files points at a file that exists.

Usage: docs_test.py REPO_ROOT GD_TRAIN_BINARY
"""
import pathlib
import re
import subprocess
import sys


def main():
    root = pathlib.Path(sys.argv[1])
    gd_train = sys.argv[2]
    flags_doc = (root / "docs/flags.md").read_text()
    documented = set(re.findall(r"`--([a-z0-9_]+)", flags_doc))
    failures = []

    def need(names, where):
        missing = sorted(set(names) - documented)
        print(f"{where}: {len(set(names))} flags, {len(missing)} undocumented")
        for name in missing:
            failures.append(f"--{name} ({where}) is not in docs/flags.md")

    for source in ("server/server_main.cc", "client/gd_main.cc", "bench/gd_bench.cc",
                   "eval/gd_eval_main.cc", "tests/load/gd_load.cc"):
        text = (root / source).read_text()
        need(re.findall(r"ABSL_FLAG\(\s*[^,]+,\s*([a-z0-9_]+)\s*,", text), source)
    reference = (root / "core/nn/config.cc").read_text()
    need(re.findall(r'\{"([a-z0-9_]+)", Type::k', reference), "reference model flags")
    for kind in ("diffusion", "classifier", "evaluator"):
        out = subprocess.run([gd_train, "help", kind], capture_output=True, text=True, check=True)
        need(re.findall(r"^\s+--([a-z0-9_]+)", out.stdout, re.M), f"gd-train {kind}")

    links = 0
    for md in list(root.glob("*.md")) + list(root.glob("docs/*.md")) + list(root.glob("models/*/*.md")) + list(root.glob("examples/*/*.md")):
        prose = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # code is not links
        for target in re.findall(r"\]\(([^)#\s]+)", prose):
            if re.match(r"[a-z]+:", target):
                continue
            links += 1
            if not (md.parent / target).exists():
                failures.append(f"{md.relative_to(root)} links to {target}, which does not exist")
    print(f"checked {links} relative links")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
