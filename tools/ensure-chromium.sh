#!/bin/sh
# The report's browser test (tests/report/test_report_browser.py) drives Debian's chromium headless.
# Install it when it is missing and we may (root, apt-get), quietly and without recommends (~40 s);
# otherwise say in one line which test will skip and how to install it. Never fails `make test`.
TEST=tests/report/test_report_browser.py
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make: no chromium on PATH: $TEST will skip; install it with 'sudo apt-get install --no-install-recommends chromium' (Debian/Ubuntu), or run 'make test' as root"
    exit 0
fi
start=$(date +%s)
if apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium >/dev/null && command -v chromium >/dev/null 2>&1; then
    echo "make: installed chromium in $(( $(date +%s) - start )) s (for $TEST)"
else
    echo "make: installing chromium failed after $(( $(date +%s) - start )) s: $TEST will skip"
fi
exit 0
