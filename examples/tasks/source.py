"""A slow CSV export, standing in for a remote system: `python source.py --rows 200 --speed 50`.

Prints a header and `rows` lines of `id,name,email` at `speed` lines per second; every
thirteenth email is malformed, so that the import has something to reject.
"""

import argparse
import time

parser = argparse.ArgumentParser()
parser.add_argument("--rows", type=int, default=200)
parser.add_argument("--speed", type=float, default=50.0, help="lines per second")
args = parser.parse_args()

print("id,name,email", flush=True)
for i in range(1, args.rows + 1):
    email = f"user{i}@example.com" if i % 13 else f"user{i}-at-example.com"
    print(f"{i},User {i},{email}", flush=True)
    time.sleep(1 / args.speed)
