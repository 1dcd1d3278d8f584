"""Cost of one supervisor decision (plan/notify.py), in process.

    python bench/notify_decide.py [--rules N] [--paths N]

Measures :meth:`NotifyPlan.decide` for the ``read`` category of a policy
with the default profile's trees plus N glob rules (allows, and denies with
exceptions), on paths taken from a walk of ``/usr`` (real lengths and
shapes):

- ``cold``: every path decided for the first time (the regular expression
  runs), the cache emptied between rounds;
- ``cached``: the same paths again (one dict lookup);
- ``reference``: the straightforward loop over the rules with one compiled
  pattern each, last match wins (what the one-regex compilation replaces);
- ``native``: a dict lookup of the same keys, the floor for any cache.

Medians of per-call times over several rounds, alternating the variants.
This is the decision alone; a supervisor round trip (LIMITS.md: 10-38 us)
comes on top.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from stockade.plan.notify import NotifyPlan
from stockade.policy.builder import PolicyBuilder
from stockade.policy.model import Action, Category, Rule
from stockade.policy.patterns import compile_pattern


def sample_paths(limit: int) -> list[str]:
    out: list[str] = []
    for root, dirs, files in os.walk("/usr"):
        dirs.sort()
        for name in sorted(files):
            out.append(os.path.join(root, name))
            if len(out) >= limit:
                return out
    return out


def make_rules(extra: int) -> list[Rule]:
    policy = PolicyBuilder("bench").profile("default").build()
    rules = [r for r in policy.rules if r.category is Category.READ]
    for i in range(extra):
        if i % 3 == 0:
            rules.append(Rule(Action.ALLOW, Category.READ, f"/opt/app{i}/**/*.py"))
        elif i % 3 == 1:
            rules.append(Rule(Action.DENY, Category.READ, f"/usr/share/doc/pkg{i}*/***"))
        else:
            rules.append(Rule(Action.ALLOW, Category.READ, f"/usr/share/doc/pkg{i - 1}*/README*"))
    return rules


def reference(rules: list[Rule], path: str) -> bool:
    verdict = False
    for r in rules:
        if compile_pattern(r.pattern).match(path):
            verdict = r.action is Action.ALLOW
    return verdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=60)
    ap.add_argument("--paths", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    paths = sample_paths(args.paths)
    rules = make_rules(args.rules)
    plan = NotifyPlan(rules, frozenset({Category.READ}), frozenset({Category.READ}), ())
    table = dict.fromkeys(paths, True)
    decide = plan.decide
    read = Category.READ
    for p in paths[:2000]:  # the decision must agree with the reference
        assert decide(read, p).allow == reference(rules, p), p

    def cold() -> float:
        plan.replace_rules(rules)
        d = plan.decide
        t = time.perf_counter()
        for p in paths:
            d(read, p)
        return time.perf_counter() - t

    def cached() -> float:
        d = plan.decide
        t = time.perf_counter()
        for p in paths:
            d(read, p)
        return time.perf_counter() - t

    def ref() -> float:
        t = time.perf_counter()
        for p in paths[:2000]:
            reference(rules, p)
        return (time.perf_counter() - t) * len(paths) / 2000

    def native() -> float:
        get = table.get
        t = time.perf_counter()
        for p in paths:
            get(p)
        return time.perf_counter() - t

    variants = {"cold": cold, "cached": cached, "reference": ref, "native": native}
    samples: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for rnd in range(args.rounds + 1):
        for name in order[rnd % len(order) :] + order[: rnd % len(order)]:
            if name == "cached":
                cold()  # fill the cache for this rule set
            value = variants[name]() / len(paths) * 1e6
            if rnd:
                samples[name].append(value)
    print(f"{len(rules)} read rules, {len(paths)} paths under /usr, {args.rounds} rounds")
    base = statistics.median(samples["native"])
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"  {name:10} {med:8.3f} us/decision   {med / base:7.1f}x a dict lookup")


if __name__ == "__main__":
    main()
