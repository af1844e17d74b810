#!/usr/bin/env python3
"""Load client of benches/cost.sh: exactly N keep-alive GETs over C connections.

    cost_client.py PORT PATH N C [HEADER_NAME HEADER_FILE] [--expect-body TEXT]
                   [--per-request NAME FILE]

Opens C connections to 127.0.0.1:PORT (all of them before the first request), then
sends N/C GETs of PATH on each, one after the other per connection (the connections run
side by side), with the header HEADER_NAME whose value is the first line of HEADER_FILE
(e.g. Authorization / Cookie). --per-request: also the header NAME, a different value on
each request, the lines of FILE in turn (at least N lines; read before the first request,
e.g. pre-made DPoP proofs). Every answer must be 200, carry the body TEXT when
given and no Set-Cookie (a session must not be re-sealed), and every connection must
stay open for all its requests (keep-alive): a reconnection, a non-200 answer, a short
count or a timeout exits with status 1 and says why. Prints "ok N" on success.
Plain python3 standard library.
"""

import http.client
import sys
import threading

TIMEOUT = 600  # seconds for one answer: the first request under valgrind can be slow


class Conn(http.client.HTTPConnection):
    """Counts its TCP connects, so a silent reconnection is seen."""

    connects = 0

    def connect(self):
        self.connects += 1
        super().connect()


def main():
    args = sys.argv[1:]
    body = None
    if "--expect-body" in args:
        i = args.index("--expect-body")
        body = args[i + 1].encode()
        del args[i : i + 2]
    per_request = None
    if "--per-request" in args:
        i = args.index("--per-request")
        with open(args[i + 2]) as f:
            per_request = (args[i + 1], [line.strip() for line in f if line.strip()])
        del args[i : i + 3]
    port, path, n, conns = int(args[0]), args[1], int(args[2]), int(args[3])
    if per_request is not None and len(per_request[1]) < n:
        sys.exit(f"cost_client: {len(per_request[1])} lines in the --per-request file, {n} needed")
    headers = {}
    if len(args) >= 6:
        with open(args[5]) as f:
            headers[args[4]] = f.readline().strip()
    if n % conns:
        sys.exit(f"cost_client: {n} requests do not split evenly over {conns} connections")
    per = n // conns
    ok = [0] * conns
    errors = []
    ready = threading.Barrier(conns)

    def worker(i):
        c = Conn("127.0.0.1", port, timeout=TIMEOUT)
        try:
            c.connect()
        except OSError as e:
            errors.append(f"connection {i + 1}: cannot connect: {e}")
            ready.abort()
            return
        try:
            ready.wait()
            mine = dict(headers)
            for k in range(per):
                if per_request is not None:
                    mine[per_request[0]] = per_request[1][i * per + k]
                c.request("GET", path, headers=mine)
                r = c.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"request {k + 1}: status {r.status}: {data[:300]!r}")
                if body is not None and data != body:
                    raise RuntimeError(f"request {k + 1}: unexpected body {data[:300]!r}")
                if r.getheader("Set-Cookie") is not None:
                    raise RuntimeError(f"request {k + 1}: answered with a Set-Cookie")
                if r.will_close:
                    raise RuntimeError(f"request {k + 1}: the server closes the connection")
                if c.connects != 1:
                    raise RuntimeError(f"request {k + 1}: reconnected (keep-alive lost)")
                ok[i] += 1
        except threading.BrokenBarrierError:
            errors.append(f"connection {i + 1}: not started (another connection failed)")
        except Exception as e:  # noqa: BLE001 - any failure is reported and fails the run
            errors.append(f"connection {i + 1}: {type(e).__name__}: {e}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(ok)
    if errors or total != n:
        for e in errors:
            print(f"cost_client: {e}", file=sys.stderr)
        print(f"cost_client: {total} of {n} requests answered 200", file=sys.stderr)
        sys.exit(1)
    print(f"ok {total}")


if __name__ == "__main__":
    main()
