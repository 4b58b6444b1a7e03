#!/usr/bin/env python3
"""A tiny CPU "training" run for the sandbox demo: fits y = a*x + b by SGD on a CSV dataset.

Stands in for a real experiment: reads data from a mounted directory, logs progress, honours
--lr/--seed/--epochs, writes a JSON result, exits 0 on success.
"""

import argparse
import csv
import json
import os
import random
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="/data", help="directory with train.csv")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default=os.environ.get("RESULTS_DIR", "."), help="where result-*.json goes")
    args = p.parse_args()
    random.seed(args.seed)
    with open(os.path.join(args.data, "train.csv")) as fh:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(fh)]
    a, b = random.uniform(-1, 1), random.uniform(-1, 1)
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    print(f"training on {len(rows)} rows, lr={args.lr} seed={args.seed} gpus={gpus or 'none'}", flush=True)
    loss = float("inf")
    for epoch in range(args.epochs):
        random.shuffle(rows)
        for x, y in rows:
            err = a * x + b - y
            a -= args.lr * err * x
            b -= args.lr * err
        loss = sum((a * x + b - y) ** 2 for x, y in rows) / len(rows)
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:3d} loss {loss:.6f}", flush=True)
        time.sleep(0.02)
    result = {"lr": args.lr, "seed": args.seed, "a": a, "b": b, "loss": loss}
    print("result " + json.dumps(result), flush=True)
    try:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"result-lr{args.lr}-seed{args.seed}.json"), "w") as fh:
            json.dump(result, fh)
    except OSError as exc:
        print(f"could not write result file: {exc}", file=sys.stderr)
    return 0 if loss < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
