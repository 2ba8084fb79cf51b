"""`upgate -t -c FILE` and `--version`: the exit codes and the file:line:col error format."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

import harness

GOOD = """\
workers: 2
drain_timeout: 2s
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  chat:
    endpoints: [127.0.0.1:9001, 127.0.0.1:9002]
    connect_timeout: 5s
    handshake_timeout: 10s
routes:
  - name: chat
    match: { path_prefix: /chat }
    kind: websocket
    upstream: chat
limits: { max_head_bytes: 16KiB, max_headers: 100, high_water: 256KiB }
timeouts: { head: 10s, idle: 0, half_close: 5s }
log: { level: info, access_log: true }
"""

# Two loader errors (an unknown key, a malformed duration) on known lines.
TWO_ERRORS = """\
workers: 2
drain_timeout: 2s
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  chat:
    endpoints: [127.0.0.1:9001]
    connect_timeout: soon
routes:
  - name: chat
    match: { path_prefix: /chat }
    upstream: chat
limits:
  max_head_bytes: 16KiB
  max_headerz: 100
"""
TWO_ERRORS_LINES = {9: ("upstreams.chat.connect_timeout", "connect_timeout"),
                    16: ("limits.max_headerz", "max_headerz")}

UNKNOWN_UPSTREAM = """\
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  chat:
    endpoints: [127.0.0.1:9001]
routes:
  - name: chat
    match: { path_prefix: /chat }
    upstream: chta
"""


class ConfigCheckTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="upgate-it-conf-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run_upgate(self, *args):
        return subprocess.run([harness.upgate_bin()] + list(args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)

    def error_lines(self, stderr, path):
        pattern = re.compile(r"^%s:(\d+):(\d+): (\S+): (.+)$" % re.escape(path))
        return [m for m in (pattern.match(l) for l in stderr.splitlines()) if m]

    def test_good_config(self):
        path = self.write("good.yaml", GOOD)
        r = self.run_upgate("-t", "-c", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_generated_test_config_is_valid(self):
        # The harness's own YAML must be accepted too (keeps the other tests honest).
        cfg = harness.make_config(
            upstreams={"chat": {"endpoints": [("127.0.0.1", 9001)], "connect_timeout": "1s"}},
            routes=[{"name": "chat", "match": {"path_prefix": "/chat", "host": "*.example.com",
                                               "headers": {"X-Tenant": "a"}},
                     "upstream": "chat"}],
            timeouts={"idle": "1s"})
        path = self.write("generated.yaml", harness.to_yaml(cfg) + "\n")
        r = self.run_upgate("-t", "-c", path)
        self.assertEqual(r.returncode, 0, "%s\n---\n%s" % (r.stderr, harness.to_yaml(cfg)))
        self.assertIn("configuration OK", r.stdout)

    def test_two_errors_both_reported(self):
        path = self.write("bad.yaml", TWO_ERRORS)
        r = self.run_upgate("-t", "-c", path)
        self.assertEqual(r.returncode, 2, "stdout=%r stderr=%r" % (r.stdout, r.stderr))
        self.assertNotIn("configuration OK", r.stdout)
        found = self.error_lines(r.stderr, path)
        self.assertEqual(len(found), 2, "want two file:line:col: key: message lines in:\n%s"
                         % r.stderr)
        for m in found:
            line, col = int(m.group(1)), int(m.group(2))
            self.assertIn(line, TWO_ERRORS_LINES, m.group(0))
            want_path, key = TWO_ERRORS_LINES[line]
            self.assertGreaterEqual(col, 1, m.group(0))
            self.assertEqual(m.group(3), want_path, m.group(0))
        self.assertEqual({int(m.group(1)) for m in found}, set(TWO_ERRORS_LINES))

    def test_unknown_upstream_reference(self):
        path = self.write("ref.yaml", UNKNOWN_UPSTREAM)
        r = self.run_upgate("-t", "-c", path)
        self.assertEqual(r.returncode, 2, r.stderr)
        found = self.error_lines(r.stderr, path)
        self.assertEqual(len(found), 1, r.stderr)
        self.assertEqual(int(found[0].group(1)), 10, found[0].group(0))
        self.assertEqual(found[0].group(3), "routes[0].upstream", found[0].group(0))
        self.assertIn("chta", found[0].group(4))

    def test_yaml_syntax_error(self):
        path = self.write("syntax.yaml", "listeners:\n  - name: public\n    address: [oops\n")
        r = self.run_upgate("-t", "-c", path)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertRegex(r.stderr, r"(?m)^%s:\d+:\d+: " % re.escape(path))

    def test_missing_file(self):
        path = os.path.join(self.dir, "does-not-exist.yaml")
        r = self.run_upgate("-t", "-c", path)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(path, r.stderr)

    def test_version(self):
        r = self.run_upgate("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"\d+\.\d+\.\d+")


if __name__ == "__main__":
    unittest.main(verbosity=2)
