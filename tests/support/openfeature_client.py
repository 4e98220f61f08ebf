#!/usr/bin/env python3
"""A real OpenFeature client for the end-to-end tests and the benchmark.

usage: openfeature_client.py PROVIDER SOURCE FLAG BEHAVIOUR [POLL_MS]

PROVIDER   flagd-file (flagd provider, in-process resolver reading the file SOURCE)
           or ofrep (OFREP provider against the base URL SOURCE)
BEHAVIOUR  watch: evaluate FLAG in a loop and print "change VALUE UNIX_NS" whenever the value
                  changes (the first line is "ready VALUE UNIX_NS");
           step:  print "ready" then, for each line read on stdin, evaluate once and print
                  "value VALUE VARIANT REASON".
POLL_MS    flagd-file only: how often the provider looks at the file (its deadline_ms).

The code default is always True: a kill switch must turn the flag off whatever the default.
The script exits when its standard input closes.
"""

import os
import sys
import threading
import time

from openfeature import api


def provider_for(kind, source, poll_ms):
    if kind == "flagd-file":
        from openfeature.contrib.provider.flagd import FlagdProvider
        from openfeature.contrib.provider.flagd.config import ResolverType

        return FlagdProvider(
            resolver_type=ResolverType.FILE,
            offline_flag_source_path=source,
            deadline_ms=poll_ms,
        )
    if kind == "ofrep":
        from openfeature.contrib.provider.ofrep import OFREPProvider

        return OFREPProvider(base_url=source)
    raise SystemExit(f"unknown provider {kind!r}")


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    kind, source, flag, behaviour = sys.argv[1:5]
    poll_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    api.set_provider_and_wait(provider_for(kind, source, poll_ms))
    client = api.get_client()

    if behaviour == "step":
        say("ready")
        for _ in sys.stdin:
            details = client.get_boolean_details(flag, True)
            reason = getattr(details.reason, "value", details.reason)
            say(f"value {details.value} {details.variant} {reason}")
        return

    def stop_on_eof():
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=stop_on_eof, daemon=True).start()
    last = client.get_boolean_value(flag, True)
    say(f"ready {last} {time.time_ns()}")
    while True:
        value = client.get_boolean_value(flag, True)
        if value != last:
            say(f"change {value} {time.time_ns()}")
            last = value
        time.sleep(0.0002)


if __name__ == "__main__":
    main()
