"""Helpers shared by the fleet tests (test_fleet, test_twotun, test_etcd_harness).

Standard library only, like the harness they build on."""
import time

import harness as H


def wait_for(check, timeout, what):
    """check() until it returns something true (which is returned); fail the
    test naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("no %s within %.0f s" % (what, timeout))
        time.sleep(0.05)


def echo_exchange(s, seed, n, timeout=30.0):
    """Send n pattern bytes on s and read the echo: (ok, message)."""
    s.settimeout(timeout)
    snd = H.Sender(s, seed, n)
    snd.start()
    end, got, sha, _ = H.recv_exact(s, n)
    err = snd.finish(timeout)
    if err:
        return False, err
    want = H.pattern_sha(seed, n)
    if end != "ok" or sha != want or snd.sha != want:
        return False, "echo %s: %d of %d bytes, sha %s want %s" % (end, got, n, sha[:12],
                                                                   want[:12])
    return True, ""
