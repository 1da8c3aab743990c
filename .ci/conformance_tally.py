"""What the API conformance run (.ci/conformance.sh) reached, from the server's own log.

    python conformance_tally.py SERVER.LOG OFFSET OPENAPI.JSON

The server logs one line per request: `method=POST route=/v1/methods status=201 ...`
(`route` is the route template, as the OpenAPI document spells the path). Every line from
byte OFFSET on is counted: OFFSET is where the log stood when schemathesis started, so the
seed step's own requests (its enrolments, challenges and recoveries) are not counted as
the run's; the hooks make no request of their own during the run (only the operator's
`ghostkey user unlock`, which is no request).

Prints the answers by operation and status, then fails (exit 1) when
- an operation of the document never answered a 2xx: the run did not reach its success
  answer, so nothing was checked of it beyond its refusals (broken hooks, for instance,
  answer 401 everywhere);
- any request, the seed step's included, answered a 5xx. That includes 503: the run sends
  one request at a time (schemathesis' default single worker), far below the line of 32
  waiting requests per core past which Argon2 work is shed, so a 503 here is a fault, not
  shedding.
"""

import collections
import json
import re
import sys

LINE = re.compile(r"\bmethod=([A-Z]+) route=(\S+) status=(\d{3})\b")


def operations(openapi_path):
    with open(openapi_path, encoding="utf-8") as f:
        doc = json.load(f)
    return sorted(
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    )


def answers(log_path, offset):
    """(method, route, status) -> count, for the lines from `offset`, and for the whole log."""
    with open(log_path, "rb") as f:
        data = f.read()
    run, whole = collections.Counter(), collections.Counter()
    for at, chunk in ((offset, data[offset:]), (0, data)):
        counter = run if at == offset else whole
        for line in chunk.decode("utf-8", "replace").splitlines():
            m = LINE.search(line)
            if m:
                counter[(m.group(1), m.group(2), int(m.group(3)))] += 1
    return run, whole


def main(log_path, offset, openapi_path):
    ops = operations(openapi_path)
    run, whole = answers(log_path, int(offset))
    by_op = collections.defaultdict(collections.Counter)
    for (method, route, status), n in run.items():
        by_op[(method, route)][status] += n

    print("answers of the run, by operation and status:")
    for op in ops + sorted(set(by_op) - set(ops)):
        counts = by_op.get(op, {})
        listed = ", ".join(f"{s}: {counts[s]}" for s in sorted(counts)) or "none"
        print(f"  {op[0]:4} {op[1]}  {listed}")

    reached = [(op, sum(n for s, n in by_op[op].items() if 200 <= s < 300)) for op in ops]
    print("operations that reached a 2xx (count of 2xx answers):")
    for (method, path), n in reached:
        if n:
            print(f"  {method:4} {path}  {n}")
    failed = False
    missing = [op for op, n in reached if n == 0]
    if missing:
        failed = True
        print(f"FAIL: {len(missing)} of {len(ops)} operations never answered a 2xx:")
        for method, path in missing:
            print(f"  {method:4} {path}")
    else:
        print(f"every one of the {len(ops)} operations answered a 2xx")

    server_errors = {k: n for k, n in whole.items() if k[2] >= 500}
    if server_errors:
        failed = True
        print("FAIL: server errors (5xx) in the server's log:")
        for (method, route, status), n in sorted(server_errors.items()):
            print(f"  {method:4} {route}  {status}: {n}")
    else:
        print("no 5xx answer in the server's log")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: conformance_tally.py SERVER.LOG OFFSET OPENAPI.JSON")
    sys.exit(main(*sys.argv[1:]))
